//! Investigations (VISA's proposals) with the data paths and the group id that grants access to
//! them: parsing of directory entries, checks of the untrusted values they carry, and the NFS
//! mounts an instance gets for its proposals.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tracing::warn;

use crate::objects::{DataMount, DataMounts};

/// Metadata key in which VISA sends an instance's proposal identifiers, comma-separated.
pub const PROPOSALS_METADATA_KEY: &str = "proposals";

/// Longest accepted proposal identifier, the width of the `investigations.proposal` column.
pub const MAX_PROPOSAL_LENGTH: usize = 255;

/// Longest accepted data path, Linux's `PATH_MAX` including the terminating NUL.
pub const MAX_PATH_LENGTH: usize = 4095;

/// Highest accepted group id. `4294967295` is `(gid_t) -1`, which means "no group" in system
/// calls, so the range stops one below it.
pub const MAX_GROUP_ID: u32 = u32::MAX - 1;

/// One investigation as the directory describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Investigation {
    /// The proposal identifier that VISA sends in an instance's `proposals` metadata.
    pub proposal: String,
    /// Absolute data paths on the NFS server, sorted and without duplicates.
    pub paths: Vec<String>,
    /// The group id (`gidNumber`) that grants access to the paths.
    pub group_id: u32,
}

/// The names of the directory attributes that carry an investigation's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeNames {
    pub identifier: String,
    pub paths: String,
    pub group_id: String,
}

/// Reason a data path was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathRejection {
    #[error("the path is empty")]
    Empty,
    #[error("the path is not absolute")]
    NotAbsolute,
    #[error("the path contains a `..` component")]
    ParentComponent,
    #[error("the path contains a control character")]
    ControlCharacter,
    #[error("the path is the root directory")]
    Root,
    #[error("the path is longer than {MAX_PATH_LENGTH} bytes")]
    TooLong,
    #[error("the value is not UTF-8")]
    NotUtf8,
}

/// Checks a data path from the directory and returns it normalised: empty and `.` components
/// and trailing slashes removed. Paths are untrusted because anyone who can edit the directory
/// could otherwise mount arbitrary server paths or smuggle characters into the pod spec.
pub fn validate_data_path(path: &str) -> Result<String, PathRejection> {
    if path.is_empty() {
        return Err(PathRejection::Empty);
    }
    if path.len() > MAX_PATH_LENGTH {
        return Err(PathRejection::TooLong);
    }
    if path.chars().any(char::is_control) {
        return Err(PathRejection::ControlCharacter);
    }
    if !path.starts_with('/') {
        return Err(PathRejection::NotAbsolute);
    }

    let mut normalised = String::with_capacity(path.len());
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(PathRejection::ParentComponent),
            name => {
                normalised.push('/');
                normalised.push_str(name);
            }
        }
    }
    if normalised.is_empty() {
        return Err(PathRejection::Root);
    }
    Ok(normalised)
}

/// Checks a proposal identifier: 1 to 255 ASCII letters, digits, `.`, `_` or `-`, and not `.`
/// or `..`. Identifiers can end up in mount paths, so nothing that reads as a path is accepted.
pub fn is_valid_proposal(identifier: &str) -> bool {
    !identifier.is_empty()
        && identifier.len() <= MAX_PROPOSAL_LENGTH
        && identifier != "."
        && identifier != ".."
        && identifier
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Parses a group id: a decimal number from 1 to [`MAX_GROUP_ID`]. Group 0 is rejected because
/// it is root's group, which no instance user should get from the directory.
pub fn parse_group_id(value: &str) -> Option<u32> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value
        .parse::<u32>()
        .ok()
        .filter(|id| (1..=MAX_GROUP_ID).contains(id))
}

/// Reason a directory entry was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryRejection {
    #[error("no {0} attribute")]
    MissingIdentifier(String),
    #[error("{count} values of {attribute}, expected one")]
    SeveralIdentifiers { attribute: String, count: usize },
    #[error("invalid proposal identifier {0:?}")]
    InvalidIdentifier(String),
    #[error("no {0} attribute")]
    MissingGroupId(String),
    #[error("{count} values of {attribute}, expected one")]
    SeveralGroupIds { attribute: String, count: usize },
    #[error(
        "invalid group id {value:?} in {attribute}: expected a number from 1 to {MAX_GROUP_ID}"
    )]
    InvalidGroupId { attribute: String, value: String },
    #[error("no {0} attribute")]
    NoPath(String),
    #[error("none of the {0} paths is valid")]
    NoValidPath(usize),
}

/// A directory entry that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEntry {
    pub dn: String,
    /// The proposal identifier when it was readable, so that its stored data is kept.
    pub proposal: Option<String>,
    pub reason: EntryRejection,
}

/// A path value that was dropped from an otherwise valid entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedPath {
    pub dn: String,
    pub value: String,
    pub reason: PathRejection,
}

/// An entry read into an investigation, with the path values that were dropped from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEntry {
    pub investigation: Investigation,
    pub rejected_paths: Vec<RejectedPath>,
}

/// Looks an attribute up by name, ignoring case as LDAP does.
fn values<'a>(attributes: &'a HashMap<String, Vec<String>>, name: &str) -> &'a [String] {
    attributes
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, values)| values.as_slice())
        .unwrap_or_default()
}

fn binary_value_count(binary: &HashMap<String, Vec<Vec<u8>>>, name: &str) -> usize {
    binary
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, values)| values.len())
        .unwrap_or(0)
}

/// Reads one directory entry into an investigation. The identifier and the group id must have
/// exactly one value each. Invalid path values are dropped, and the entry is skipped when no
/// valid path is left.
pub fn parse_entry(
    entry: &ldap3::SearchEntry,
    names: &AttributeNames,
) -> Result<ParsedEntry, SkippedEntry> {
    let skip = |proposal: Option<&str>, reason| SkippedEntry {
        dn: entry.dn.clone(),
        proposal: proposal.map(str::to_owned),
        reason,
    };

    let proposal = match values(&entry.attrs, &names.identifier) {
        [] => {
            return Err(skip(
                None,
                EntryRejection::MissingIdentifier(names.identifier.clone()),
            ));
        }
        [one] => one.as_str(),
        several => {
            return Err(skip(
                None,
                EntryRejection::SeveralIdentifiers {
                    attribute: names.identifier.clone(),
                    count: several.len(),
                },
            ));
        }
    };
    if !is_valid_proposal(proposal) {
        return Err(skip(
            None,
            EntryRejection::InvalidIdentifier(proposal.to_owned()),
        ));
    }

    let group_values = values(&entry.attrs, &names.group_id);
    let group_count = group_values.len() + binary_value_count(&entry.bin_attrs, &names.group_id);
    let group_id = match (group_values, group_count) {
        (_, 0) => {
            return Err(skip(
                Some(proposal),
                EntryRejection::MissingGroupId(names.group_id.clone()),
            ));
        }
        ([one], 1) => parse_group_id(one).ok_or_else(|| {
            skip(
                Some(proposal),
                EntryRejection::InvalidGroupId {
                    attribute: names.group_id.clone(),
                    value: one.clone(),
                },
            )
        })?,
        ([], 1) => {
            return Err(skip(
                Some(proposal),
                EntryRejection::InvalidGroupId {
                    attribute: names.group_id.clone(),
                    value: "<binary value>".to_owned(),
                },
            ));
        }
        (_, count) => {
            return Err(skip(
                Some(proposal),
                EntryRejection::SeveralGroupIds {
                    attribute: names.group_id.clone(),
                    count,
                },
            ));
        }
    };

    let path_values = values(&entry.attrs, &names.paths);
    let binary_paths = binary_value_count(&entry.bin_attrs, &names.paths);
    let path_count = path_values.len() + binary_paths;
    if path_count == 0 {
        return Err(skip(
            Some(proposal),
            EntryRejection::NoPath(names.paths.clone()),
        ));
    }

    let mut paths = BTreeSet::new();
    let mut rejected_paths = Vec::new();
    for value in path_values {
        match validate_data_path(value) {
            Ok(path) => {
                paths.insert(path);
            }
            Err(reason) => rejected_paths.push(RejectedPath {
                dn: entry.dn.clone(),
                value: value.clone(),
                reason,
            }),
        }
    }
    for _ in 0..binary_paths {
        rejected_paths.push(RejectedPath {
            dn: entry.dn.clone(),
            value: "<binary value>".to_owned(),
            reason: PathRejection::NotUtf8,
        });
    }
    if paths.is_empty() {
        return Err(skip(
            Some(proposal),
            EntryRejection::NoValidPath(path_count),
        ));
    }

    Ok(ParsedEntry {
        investigation: Investigation {
            proposal: proposal.to_owned(),
            paths: paths.into_iter().collect(),
            group_id,
        },
        rejected_paths,
    })
}

/// The investigations read from a complete directory search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryContents {
    /// Valid investigations, one per proposal.
    pub investigations: Vec<Investigation>,
    /// Proposals whose entries were skipped. Their stored data is kept as it was and they are
    /// not marked gone, so that an edit mistake in the directory does not cut running access.
    pub kept_proposals: BTreeSet<String>,
    /// Entries returned by the search, usable or not.
    pub entries: u64,
    pub skipped_entries: u64,
    /// Invalid path values dropped from entries that were used with their other paths.
    pub skipped_paths: u64,
}

/// Parses every entry of a search, logging one line per skipped entry and per dropped path.
/// Two valid entries with one proposal identifier are merged when their group ids agree.
/// When they disagree, neither is used.
pub fn parse_directory(
    entries: &[ldap3::SearchEntry],
    names: &AttributeNames,
) -> DirectoryContents {
    let mut contents = DirectoryContents {
        entries: entries.len() as u64,
        ..DirectoryContents::default()
    };
    let mut by_proposal: BTreeMap<String, (Investigation, String)> = BTreeMap::new();
    let mut conflicting = BTreeSet::new();

    for entry in entries {
        match parse_entry(entry, names) {
            Ok(parsed) => {
                for rejected in &parsed.rejected_paths {
                    contents.skipped_paths += 1;
                    warn!(dn = %rejected.dn, value = %rejected.value.escape_debug(), reason = %rejected.reason, "skipped an invalid data path");
                }
                let investigation = parsed.investigation;
                if conflicting.contains(&investigation.proposal) {
                    contents.skipped_entries += 1;
                    warn!(dn = %entry.dn, proposal = %investigation.proposal, "skipped an entry whose proposal has entries with different group ids");
                    continue;
                }
                match by_proposal.remove(&investigation.proposal) {
                    None => {
                        by_proposal.insert(
                            investigation.proposal.clone(),
                            (investigation, entry.dn.clone()),
                        );
                    }
                    Some((mut first, first_dn)) if first.group_id == investigation.group_id => {
                        let merged: BTreeSet<String> =
                            first.paths.into_iter().chain(investigation.paths).collect();
                        first.paths = merged.into_iter().collect();
                        by_proposal.insert(first.proposal.clone(), (first, first_dn));
                    }
                    Some((first, first_dn)) => {
                        contents.skipped_entries += 2;
                        warn!(dn = %entry.dn, other_dn = %first_dn, proposal = %first.proposal, group_id = investigation.group_id, other_group_id = first.group_id, "skipped two entries of one proposal with different group ids");
                        conflicting.insert(first.proposal);
                    }
                }
            }
            Err(skipped) => {
                contents.skipped_entries += 1;
                warn!(dn = %skipped.dn, reason = %skipped.reason, "skipped a directory entry");
                if let Some(proposal) = skipped.proposal {
                    contents.kept_proposals.insert(proposal);
                }
            }
        }
    }

    contents.kept_proposals.extend(conflicting);
    contents.investigations = by_proposal
        .into_values()
        .map(|(investigation, _)| investigation)
        .filter(|investigation| !contents.kept_proposals.contains(&investigation.proposal))
        .collect();
    contents
}

/// Returns the valid proposal identifiers in an instance's `proposals` metadata, in order and
/// without duplicates. Invalid ones are left out with a log line.
pub fn proposals_from_metadata(metadata: &BTreeMap<String, String>) -> Vec<String> {
    let Some(value) = metadata.get(PROPOSALS_METADATA_KEY) else {
        return Vec::new();
    };
    let mut proposals = Vec::new();
    for proposal in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !is_valid_proposal(proposal) {
            warn!(proposal = %proposal.escape_debug(), "ignored an invalid proposal identifier in the instance metadata");
            continue;
        }
        if !proposals.iter().any(|known| known == proposal) {
            proposals.push(proposal.to_owned());
        }
    }
    proposals
}

/// Settings of the NFS mounts of investigation data in instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsSettings {
    /// NFS server that exports the data paths.
    pub server: String,
    pub read_only: bool,
    /// Mount path in the main container, with `{proposal}` and `{path}` replaced by the proposal
    /// identifier and the data path.
    pub mount_path: String,
}

/// Checks a mount path template by expanding it with sample values.
pub fn validate_mount_path_template(template: &str) -> Result<(), String> {
    if !template.contains("{path}") && !template.contains("{proposal}") {
        return Err(format!(
            "mount path {template:?} contains neither {{path}} nor {{proposal}}, so every data \
             path would be mounted at the same place"
        ));
    }
    let sample = expand_mount_path(template, "20250001", "/data/sample");
    validate_data_path(&sample)
        .map(|_| ())
        .map_err(|reason| format!("mount path {template:?} expands to {sample:?}: {reason}"))
}

fn expand_mount_path(template: &str, proposal: &str, path: &str) -> String {
    template
        .replace("{proposal}", proposal)
        .replace("{path}", path)
}

/// Builds the NFS mounts and supplemental groups of an instance from its investigations.
/// Mount paths that repeat get `-2`, `-3`... appended. A mount path that is invalid or that
/// equals one of `reserved_mount_paths` (the user's home volume) is skipped with a log line.
pub fn data_mounts(
    investigations: &[Investigation],
    settings: &NfsSettings,
    reserved_mount_paths: &[&str],
) -> DataMounts {
    let mut mounts: Vec<DataMount> = Vec::new();
    let mut groups = BTreeSet::new();
    let mut used: BTreeSet<String> = reserved_mount_paths
        .iter()
        .map(|path| path.trim_end_matches('/').to_owned())
        .collect();

    for investigation in investigations {
        for path in &investigation.paths {
            // Stored paths were checked at sync time. They are checked again here because this
            // is the last step before a path reaches the pod spec.
            let path = match validate_data_path(path) {
                Ok(path) => path,
                Err(reason) => {
                    warn!(proposal = %investigation.proposal, path = %path.escape_debug(), %reason, "skipped a data mount with an invalid path");
                    continue;
                }
            };
            let expanded = expand_mount_path(&settings.mount_path, &investigation.proposal, &path);
            let mount_path = match validate_data_path(&expanded) {
                Ok(mount_path) => mount_path,
                Err(reason) => {
                    warn!(proposal = %investigation.proposal, mount_path = %expanded.escape_debug(), %reason, "skipped a data mount with an invalid mount path");
                    continue;
                }
            };
            if reserved_mount_paths
                .iter()
                .any(|reserved| reserved.trim_end_matches('/') == mount_path)
            {
                warn!(proposal = %investigation.proposal, %mount_path, "skipped a data mount at the mount path of the user's volume");
                continue;
            }
            let mut unique = mount_path.clone();
            let mut suffix = 2;
            while used.contains(&unique) {
                unique = format!("{mount_path}-{suffix}");
                suffix += 1;
            }
            used.insert(unique.clone());
            mounts.push(DataMount {
                volume_name: format!("investigation-{}", mounts.len()),
                proposal: investigation.proposal.clone(),
                server: settings.server.clone(),
                path,
                mount_path: unique,
                read_only: settings.read_only,
            });
            groups.insert(i64::from(investigation.group_id));
        }
    }

    DataMounts {
        mounts,
        supplemental_groups: groups.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> AttributeNames {
        AttributeNames {
            identifier: "cn".to_owned(),
            paths: "description".to_owned(),
            group_id: "gidNumber".to_owned(),
        }
    }

    fn entry(dn: &str, attributes: &[(&str, &[&str])]) -> ldap3::SearchEntry {
        ldap3::SearchEntry {
            dn: dn.to_owned(),
            attrs: attributes
                .iter()
                .map(|(name, values)| {
                    (
                        name.to_string(),
                        values.iter().map(|v| v.to_string()).collect(),
                    )
                })
                .collect(),
            bin_attrs: HashMap::new(),
        }
    }

    #[test]
    fn path_validation_accepts_and_normalises() {
        assert_eq!(
            validate_data_path("/data/2025/p1").unwrap(),
            "/data/2025/p1"
        );
        assert_eq!(validate_data_path("/data//p1/./").unwrap(), "/data/p1");
        assert_eq!(validate_data_path("/data/p 1").unwrap(), "/data/p 1");
        assert_eq!(validate_data_path("/data/..x").unwrap(), "/data/..x");
    }

    #[test]
    fn path_validation_rejects_bad_paths() {
        let cases = [
            ("", PathRejection::Empty),
            ("data/p1", PathRejection::NotAbsolute),
            ("./data", PathRejection::NotAbsolute),
            ("/data/../etc", PathRejection::ParentComponent),
            ("/data/p1/..", PathRejection::ParentComponent),
            ("/data/p1\n/etc", PathRejection::ControlCharacter),
            ("/data/p1\0", PathRejection::ControlCharacter),
            ("/data/\u{7f}", PathRejection::ControlCharacter),
            ("/data/\u{85}", PathRejection::ControlCharacter),
            ("/", PathRejection::Root),
            ("//./", PathRejection::Root),
        ];
        for (path, expected) in cases {
            assert_eq!(validate_data_path(path), Err(expected), "{path:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_LENGTH));
        assert_eq!(validate_data_path(&long), Err(PathRejection::TooLong));
    }

    #[test]
    fn group_id_parsing() {
        assert_eq!(parse_group_id("5001"), Some(5001));
        assert_eq!(parse_group_id("4294967294"), Some(MAX_GROUP_ID));
        for bad in [
            "",
            "abc",
            "-5",
            "+5",
            "0",
            " 5001",
            "5001 ",
            "4294967295",
            "99999999999",
            "1e3",
        ] {
            assert_eq!(parse_group_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn proposal_identifiers() {
        for good in ["2025096612", "4-01-1234", "ABC_1.2"] {
            assert!(is_valid_proposal(good), "{good:?}");
        }
        let long = "1".repeat(MAX_PROPOSAL_LENGTH + 1);
        for bad in ["", ".", "..", "a/b", "a b", "a,b", "é", long.as_str()] {
            assert!(!is_valid_proposal(bad), "{bad:?}");
        }
    }

    #[test]
    fn entry_with_paths_and_group() {
        let parsed = parse_entry(
            &entry(
                "cn=2025096612,ou=p,dc=visa,dc=test",
                &[
                    ("cn", &["2025096612"]),
                    ("gidNumber", &["5001"]),
                    ("description", &["/data/b", "/data/a", "/data/a/"]),
                ],
            ),
            &names(),
        )
        .unwrap();
        assert_eq!(parsed.investigation.proposal, "2025096612");
        assert_eq!(parsed.investigation.group_id, 5001);
        assert_eq!(parsed.investigation.paths, ["/data/a", "/data/b"]);
        assert!(parsed.rejected_paths.is_empty());
    }

    #[test]
    fn entry_attribute_names_ignore_case() {
        let parsed = parse_entry(
            &entry(
                "cn=1,dc=test",
                &[
                    ("CN", &["1"]),
                    ("gidnumber", &["7"]),
                    ("Description", &["/d"]),
                ],
            ),
            &names(),
        )
        .unwrap();
        assert_eq!(parsed.investigation.group_id, 7);
    }

    #[test]
    fn entry_drops_bad_paths_and_keeps_good_ones() {
        let parsed = parse_entry(
            &entry(
                "cn=1,dc=test",
                &[
                    ("cn", &["1"]),
                    ("gidNumber", &["7"]),
                    ("description", &["/data/ok", "../etc", "/data/\u{1b}[31m"]),
                ],
            ),
            &names(),
        )
        .unwrap();
        assert_eq!(parsed.investigation.paths, ["/data/ok"]);
        let reasons: Vec<PathRejection> = parsed.rejected_paths.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            [PathRejection::NotAbsolute, PathRejection::ControlCharacter]
        );
    }

    #[test]
    fn entry_rejections() {
        let cases: Vec<(ldap3::SearchEntry, EntryRejection, Option<&str>)> = vec![
            (
                entry("cn=x", &[("gidNumber", &["7"]), ("description", &["/d"])]),
                EntryRejection::MissingIdentifier("cn".to_owned()),
                None,
            ),
            (
                entry(
                    "cn=x",
                    &[
                        ("cn", &["1", "2"]),
                        ("gidNumber", &["7"]),
                        ("description", &["/d"]),
                    ],
                ),
                EntryRejection::SeveralIdentifiers {
                    attribute: "cn".to_owned(),
                    count: 2,
                },
                None,
            ),
            (
                entry(
                    "cn=x",
                    &[
                        ("cn", &["../1"]),
                        ("gidNumber", &["7"]),
                        ("description", &["/d"]),
                    ],
                ),
                EntryRejection::InvalidIdentifier("../1".to_owned()),
                None,
            ),
            (
                entry("cn=x", &[("cn", &["1"]), ("description", &["/d"])]),
                EntryRejection::MissingGroupId("gidNumber".to_owned()),
                Some("1"),
            ),
            (
                entry(
                    "cn=x",
                    &[
                        ("cn", &["1"]),
                        ("gidNumber", &["abc"]),
                        ("description", &["/d"]),
                    ],
                ),
                EntryRejection::InvalidGroupId {
                    attribute: "gidNumber".to_owned(),
                    value: "abc".to_owned(),
                },
                Some("1"),
            ),
            (
                entry(
                    "cn=x",
                    &[
                        ("cn", &["1"]),
                        ("gidNumber", &["7", "8"]),
                        ("description", &["/d"]),
                    ],
                ),
                EntryRejection::SeveralGroupIds {
                    attribute: "gidNumber".to_owned(),
                    count: 2,
                },
                Some("1"),
            ),
            (
                entry("cn=x", &[("cn", &["1"]), ("gidNumber", &["7"])]),
                EntryRejection::NoPath("description".to_owned()),
                Some("1"),
            ),
            (
                entry(
                    "cn=x",
                    &[
                        ("cn", &["1"]),
                        ("gidNumber", &["7"]),
                        ("description", &["rel", "/"]),
                    ],
                ),
                EntryRejection::NoValidPath(2),
                Some("1"),
            ),
        ];
        for (entry, reason, proposal) in cases {
            let skipped = parse_entry(&entry, &names()).unwrap_err();
            assert_eq!(skipped.reason, reason);
            assert_eq!(skipped.proposal.as_deref(), proposal, "{reason}");
        }
    }

    #[test]
    fn entry_with_binary_group_id_is_skipped() {
        let mut binary = entry("cn=x", &[("cn", &["1"]), ("description", &["/d"])]);
        binary
            .bin_attrs
            .insert("gidNumber".to_owned(), vec![vec![0xff, 0xfe]]);
        let skipped = parse_entry(&binary, &names()).unwrap_err();
        assert!(matches!(
            skipped.reason,
            EntryRejection::InvalidGroupId { .. }
        ));
    }

    #[test]
    fn directory_merges_and_counts() {
        let entries = [
            entry(
                "cn=a1",
                &[
                    ("cn", &["a"]),
                    ("gidNumber", &["1"]),
                    ("description", &["/a1"]),
                ],
            ),
            entry(
                "cn=a2",
                &[
                    ("cn", &["a"]),
                    ("gidNumber", &["1"]),
                    ("description", &["/a2", "x"]),
                ],
            ),
            entry(
                "cn=b1",
                &[
                    ("cn", &["b"]),
                    ("gidNumber", &["2"]),
                    ("description", &["/b"]),
                ],
            ),
            entry(
                "cn=b2",
                &[
                    ("cn", &["b"]),
                    ("gidNumber", &["3"]),
                    ("description", &["/b"]),
                ],
            ),
            entry(
                "cn=b3",
                &[
                    ("cn", &["b"]),
                    ("gidNumber", &["2"]),
                    ("description", &["/b"]),
                ],
            ),
            entry("cn=c", &[("cn", &["c"]), ("description", &["/c"])]),
            entry("cn=d", &[("gidNumber", &["4"]), ("description", &["/d"])]),
        ];
        let contents = parse_directory(&entries, &names());
        assert_eq!(contents.entries, 7);
        assert_eq!(contents.investigations.len(), 1);
        assert_eq!(contents.investigations[0].proposal, "a");
        assert_eq!(contents.investigations[0].paths, ["/a1", "/a2"]);
        assert_eq!(contents.skipped_paths, 1);
        // b1 and b2 conflict, b3 arrives after the conflict, c has no group, d no identifier.
        assert_eq!(contents.skipped_entries, 5);
        let kept: Vec<&str> = contents.kept_proposals.iter().map(String::as_str).collect();
        assert_eq!(kept, ["b", "c"]);
    }

    #[test]
    fn proposals_from_instance_metadata() {
        let metadata = BTreeMap::from([(
            "proposals".to_owned(),
            " 2025096612, 2025097120,,2025096612,../x".to_owned(),
        )]);
        assert_eq!(
            proposals_from_metadata(&metadata),
            ["2025096612", "2025097120"]
        );
        assert!(proposals_from_metadata(&BTreeMap::new()).is_empty());
    }

    fn nfs(mount_path: &str) -> NfsSettings {
        NfsSettings {
            server: "nfs.example.org".to_owned(),
            read_only: true,
            mount_path: mount_path.to_owned(),
        }
    }

    fn investigation(proposal: &str, paths: &[&str], group_id: u32) -> Investigation {
        Investigation {
            proposal: proposal.to_owned(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            group_id,
        }
    }

    #[test]
    fn mounts_at_the_data_path() {
        let mounts = data_mounts(
            &[
                investigation("p1", &["/data/p1/raw", "/data/p1/processed"], 5001),
                investigation("p2", &["/data/p2"], 5002),
            ],
            &nfs("{path}"),
            &["/home"],
        );
        let paths: Vec<(&str, &str)> = mounts
            .mounts
            .iter()
            .map(|m| (m.path.as_str(), m.mount_path.as_str()))
            .collect();
        assert_eq!(
            paths,
            [
                ("/data/p1/raw", "/data/p1/raw"),
                ("/data/p1/processed", "/data/p1/processed"),
                ("/data/p2", "/data/p2"),
            ]
        );
        assert_eq!(mounts.supplemental_groups, [5001, 5002]);
        assert!(mounts.mounts.iter().all(|m| m.read_only));
        assert_eq!(mounts.mounts[2].volume_name, "investigation-2");
    }

    #[test]
    fn mounts_by_proposal_get_unique_paths() {
        let mounts = data_mounts(
            &[investigation("p1", &["/a", "/b", "/c"], 5001)],
            &nfs("/data/{proposal}"),
            &["/home"],
        );
        let mount_paths: Vec<&str> = mounts
            .mounts
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mount_paths, ["/data/p1", "/data/p1-2", "/data/p1-3"]);
    }

    #[test]
    fn mounts_skip_bad_and_reserved_paths() {
        let mounts = data_mounts(
            &[
                investigation("p1", &["/home", "/data/../etc", "relative"], 5001),
                investigation("p2", &["/data/p2"], 5002),
            ],
            &nfs("{path}"),
            &["/home/"],
        );
        assert_eq!(mounts.mounts.len(), 1);
        assert_eq!(mounts.mounts[0].path, "/data/p2");
        assert_eq!(
            mounts.supplemental_groups,
            [5002],
            "p1 has no mount, so no group"
        );
    }

    #[test]
    fn mount_path_templates() {
        assert!(validate_mount_path_template("{path}").is_ok());
        assert!(validate_mount_path_template("/data/{proposal}").is_ok());
        assert!(validate_mount_path_template("/mnt{path}").is_ok());
        assert!(validate_mount_path_template("/data").is_err());
        assert!(validate_mount_path_template("data/{proposal}").is_err());
        assert!(validate_mount_path_template("/data/../{proposal}").is_err());
    }
}
