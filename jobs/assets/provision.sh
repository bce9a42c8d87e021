#!/bin/sh
# Prepares a VISA instance for its owner: groups, the owner's user, the time zone, the home
# directory from the image's template, sudo when a security group grants it, then the boot
# command. Kubernetes runs it as the main container's post-start hook at every start, so every
# step is idempotent. Every value arrives as data in the environment and is checked here again;
# none is ever evaluated as shell code.
#
# Environment:
#   VISA_OWNER          owner's user name (POSIX: lower case letter or _, then [a-z0-9_.-], at most 32)
#   VISA_OWNER_UID      owner's numeric user id
#   VISA_GROUPS         comma-separated NAME:GID pairs the owner joins (default: the file
#                       $VISA_CONFIG_DIR/groups, which the provider updates without a restart)
#   VISA_SUDO           "true" to grant the owner sudo (default: the file $VISA_CONFIG_DIR/sudo)
#   VISA_CONFIG_DIR     the instance's mounted configuration (default /etc/visa)
#   TZ                  IANA time zone, such as Europe/Madrid
#   VISA_HOME_TEMPLATE  directory copied into a new home (default /etc/skel)
#   VISA_BOOT_COMMAND   file with the image's boot command (default /etc/visa/boot-command)
#   VISA_ROOT           root of the system to change (default /); tests use a throw-away root
set -eu
export LC_ALL=C

root=${VISA_ROOT:-/}
root=${root%/}
log_dir="$root/var/log/visa"

fail() {
  echo "visa-provision: $*" >&2
  exit 1
}

# Checks with case patterns rather than grep, because grep matches line by line and a value
# with a newline could pass on its first line.
valid_name() {
  case $1 in
  '' | *[!a-z0-9_.-]* | [0-9.-]*) return 1 ;;
  esac
  [ ${#1} -le 32 ]
}

valid_id() {
  case $1 in
  '' | *[!0-9]* | 0*) return 1 ;;
  esac
  [ ${#1} -le 10 ] && [ "$1" -le 2147483647 ]
}

# Returns whether the colon-separated file has an entry whose first field is exactly $2.
has_entry() {
  awk -F: -v name="$2" '$1 == name { found = 1 } END { exit !found }' "$1"
}

# useradd and groupadd write below another root with --prefix, without chroot.
prefix_option() {
  if [ -n "$root" ]; then
    printf '%s\n' "--prefix=$root"
  fi
}

config_dir=${VISA_CONFIG_DIR:-/etc/visa}
if [ -z "${VISA_GROUPS+set}" ] && [ -f "$config_dir/groups" ]; then
  VISA_GROUPS=$(cat "$config_dir/groups")
fi
if [ -z "${VISA_SUDO+set}" ] && [ -f "$config_dir/sudo" ]; then
  VISA_SUDO=$(cat "$config_dir/sudo")
fi

owner=${VISA_OWNER:-}
owner_uid=${VISA_OWNER_UID:-}
valid_name "$owner" || fail "invalid VISA_OWNER: expected a POSIX user name"
valid_id "$owner_uid" || fail "invalid VISA_OWNER_UID: expected a number from 1 to 2147483647"

# Every value is checked before anything changes, so a bad one leaves the system as it was.
zone=${TZ:-UTC}
case $zone in
'' | *[!A-Za-z0-9_+/-]* | /* | */ | *//*) fail "invalid TZ: expected a zone such as Europe/Madrid" ;;
esac

old_ifs=$IFS
IFS=,
for pair in ${VISA_GROUPS:-}; do
  name=${pair%%:*}
  gid=${pair#*:}
  valid_name "$name" || fail "invalid group name in VISA_GROUPS: expected a POSIX group name"
  valid_id "$gid" || fail "invalid group id in VISA_GROUPS for group $name"
done

group_names=""
for pair in ${VISA_GROUPS:-}; do
  IFS=$old_ifs
  name=${pair%%:*}
  gid=${pair#*:}
  if ! has_entry "$root/etc/group" "$name"; then
    if awk -F: -v gid="$gid" '$3 == gid { found = 1 } END { exit !found }' "$root/etc/group"; then
      echo "visa-provision: group id $gid is taken, so group $name is not created" >&2
      IFS=,
      continue
    fi
    # shellcheck disable=SC2046 # the prefix option is one word or none
    groupadd $(prefix_option) -g "$gid" "$name"
  fi
  group_names="${group_names:+$group_names,}$name"
  IFS=,
done
IFS=$old_ifs

home="/home/$owner"
if ! has_entry "$root/etc/passwd" "$owner"; then
  # shellcheck disable=SC2046
  useradd $(prefix_option) -M -d "$home" -s /bin/bash -u "$owner_uid" -U \
    ${group_names:+-G "$group_names"} "$owner"
elif [ -n "$group_names" ]; then
  # shellcheck disable=SC2046
  usermod $(prefix_option) -a -G "$group_names" "$owner"
fi

template=${VISA_HOME_TEMPLATE:-/etc/skel}
if [ ! -d "$root$home" ]; then
  mkdir -p "$root$home"
  if [ -d "$root$template" ]; then
    cp -a "$root$template/." "$root$home/"
  fi
  owner_gid=$(awk -F: -v name="$owner" '$1 == name { print $4 }' "$root/etc/passwd")
  chown -R "$owner_uid:$owner_gid" "$root$home"
  chmod 0750 "$root$home"
fi

if [ -e "$root/usr/share/zoneinfo/$zone" ]; then
  ln -sf "/usr/share/zoneinfo/$zone" "$root/etc/localtime"
  printf '%s\n' "$zone" >"$root/etc/timezone"
fi

sudo_rule="$root/etc/sudoers.d/visa-owner"
if [ "${VISA_SUDO:-false}" = true ]; then
  mkdir -p "$root/etc/sudoers.d"
  printf '%s ALL=(ALL) NOPASSWD: ALL\n' "$owner" >"$sudo_rule.tmp"
  chmod 0440 "$sudo_rule.tmp"
  mv "$sudo_rule.tmp" "$sudo_rule"
else
  rm -f "$sudo_rule"
fi

boot_command=${VISA_BOOT_COMMAND:-/etc/visa/boot-command}
mkdir -p "$log_dir"
if [ -s "$root$boot_command" ]; then
  # The hook must return for the container to start, so the boot command runs on its own.
  nohup sh "$root$boot_command" >>"$log_dir/boot-command.log" 2>&1 </dev/null &
fi
echo "visa-provision: prepared the instance for $owner" >>"$log_dir/provision.log"
