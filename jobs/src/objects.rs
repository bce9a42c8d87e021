//! Kubernetes objects of one instance: a StatefulSet with one replica when running and zero
//! when stopped, its headless Service, and a volume claim template whose claims outlive it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapKeySelector, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
    EnvVarSource, ExecAction, Lifecycle, LifecycleHandler, LocalObjectReference, NFSVolumeSource,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::catalogue::{Flavour, Image, ImagePort, SecurityGroup, Sidecar};
use crate::model::{InstanceRecord, format_visa_time};

pub const MAIN_CONTAINER: &str = "visa-instance-container";
pub const FIELD_MANAGER: &str = "visa-k8s-provider";
pub const MANAGED_BY: &str = "visa-k8s-provider";
pub const COMPONENT: &str = "visa-instance";
pub const DATA_VOLUME: &str = "data";

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_INSTANCE_ID: &str = "visa-cloud-provider/instance-id";
pub const LABEL_NAME: &str = "visa-cloud-provider/name";
pub const LABEL_ENVIRONMENT: &str = "visa-cloud-provider/environment";
pub const LABEL_FLAVOUR: &str = "visa-cloud-provider/flavour";
pub const LABEL_IMAGE: &str = "visa-cloud-provider/image";
pub const LABEL_OWNER: &str = "visa-cloud-provider/owner";
pub const LABEL_UID: &str = "visa-cloud-provider/uid";

pub const LABEL_SECURITY_GROUP: &str = "visa-cloud-provider/security-group";
/// The node label that names the node; a migration pins the pod to it.
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";

pub const ANNOTATION_LAST_ACTION: &str = "visa-cloud-provider/last_commanded_action";
pub const ANNOTATION_LAST_ACTION_AT: &str = "visa-cloud-provider/last_action_datetime";
pub const ANNOTATION_OWNER: &str = "visa-cloud-provider/owner";
pub const ANNOTATION_SECURITY_GROUP: &str = "visa-cloud-provider/security-group";

/// Selects every object this provider manages in the instances' namespace.
pub fn managed_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}={COMPONENT}")
}

/// Site settings that shape every instance's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSettings {
    pub namespace: String,
    /// Value of the environment label, for example `production`.
    pub environment: String,
    /// StorageClass of the user's volume; `None` takes the cluster's default class.
    pub storage_class: Option<String>,
    /// IANA time zone given to instances in `TZ`.
    pub time_zone: String,
    pub image_pull_secrets: Vec<String>,
    /// Mount path of the user's volume in the main container.
    pub volume_mount_path: String,
    /// Numeric user id of the owner inside instances.
    pub owner_uid: i64,
}

impl Default for ObjectSettings {
    fn default() -> Self {
        Self {
            namespace: "visa-instances".to_owned(),
            environment: "local".to_owned(),
            storage_class: None,
            time_zone: "UTC".to_owned(),
            image_pull_secrets: Vec::new(),
            volume_mount_path: "/home".to_owned(),
            owner_uid: 1000,
        }
    }
}

/// One NFS export mounted into the main container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataMount {
    /// Name of the pod volume, unique in the pod.
    pub volume_name: String,
    /// The proposal whose data this is, for logs.
    pub proposal: String,
    pub server: String,
    /// Exported path on the server.
    pub path: String,
    /// Mount path of the export in the main container.
    pub mount_path: String,
    pub read_only: bool,
}

/// Investigation data of an instance: NFS mounts and the group ids that grant access to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataMounts {
    pub mounts: Vec<DataMount>,
    /// Added to the pod's `securityContext.supplementalGroups`.
    pub supplemental_groups: Vec<i64>,
}

/// Maximum length of an instance id. A StatefulSet's pods carry the label
/// `controller-revision-hash=<name>-<hash>`, which must fit in 63 characters.
pub const MAX_ID_LENGTH: usize = 40;

/// Derives a DNS-1123 label from VISA's instance name: `VISA_INSTANCE-1042` becomes
/// `visa-instance-1042`. Returns `None` when no letter or digit is left.
pub fn id_from_name(name: &str) -> Option<String> {
    let mut id = String::with_capacity(name.len());
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            id.push(c);
        } else if !id.ends_with('-') && !id.is_empty() {
            id.push('-');
        }
    }
    id.truncate(MAX_ID_LENGTH);
    let id = id.trim_end_matches('-').to_owned();
    if id.is_empty() { None } else { Some(id) }
}

/// Makes any text a valid label value: at most 63 characters of letters, digits, `-`, `_` and
/// `.`, starting and ending with a letter or digit. The exact value stays in an annotation.
pub fn label_value(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// Returns 32 bits of the FNV-1a hash of `text`, to keep apart names that a mapping made equal.
fn short_hash(text: &str) -> u32 {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    hash as u32
}

/// Makes a label value like `label_value`, and appends a hash of the exact text when the mapping
/// changed it, so that owners such as `jdoe.` and `_jdoe` never share a label value.
pub fn distinct_label_value(text: &str) -> String {
    let value = label_value(text);
    if value == text {
        return value;
    }
    let base: String = value.chars().take(54).collect();
    let base = base.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if base.is_empty() {
        format!("h{:08x}", short_hash(text))
    } else {
        format!("{base}-{:08x}", short_hash(text))
    }
}

pub fn service_name(id: &str) -> String {
    format!("{id}-svc")
}

/// Name of the pod of a StatefulSet with one replica.
pub fn pod_name(id: &str) -> String {
    format!("{id}-0")
}

/// Name of the user's volume claim, which the StatefulSet controller makes from the template.
pub fn volume_claim_name(id: &str) -> String {
    format!("{DATA_VOLUME}-{id}-0")
}

fn selector_labels(record: &InstanceRecord) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_COMPONENT.to_owned(), COMPONENT.to_owned()),
        (LABEL_INSTANCE_ID.to_owned(), record.id.clone()),
    ])
}

fn instance_labels(record: &InstanceRecord, settings: &ObjectSettings) -> BTreeMap<String, String> {
    let mut labels = selector_labels(record);
    let mut add = |key: &str, value: &str| {
        let value = distinct_label_value(value);
        if !value.is_empty() {
            labels.insert(key.to_owned(), value);
        }
    };
    add(LABEL_NAME, &record.name);
    add(LABEL_ENVIRONMENT, &settings.environment);
    add(LABEL_FLAVOUR, &record.flavour_id);
    add(LABEL_IMAGE, &record.image_id);
    add(LABEL_OWNER, record.owner().unwrap_or_default());
    add(
        LABEL_UID,
        record
            .metadata
            .get("uid")
            .map(String::as_str)
            .unwrap_or_default(),
    );
    labels
}

/// Builds the StatefulSet of an instance, with `replicas` 1 when running and 0 when stopped.
/// The last-action annotations come from the record, so applying the same record twice changes
/// nothing and a new reboot request changes the pod template, which recreates the pod.
/// `data` adds one NFS volume per data mount and the supplemental groups to the pod.
pub fn stateful_set(
    record: &InstanceRecord,
    flavour: &Flavour,
    image: &Image,
    settings: &ObjectSettings,
    data: &DataMounts,
    replicas: i32,
) -> StatefulSet {
    let labels = instance_labels(record, settings);
    let mut annotations = BTreeMap::from([
        (
            ANNOTATION_LAST_ACTION.to_owned(),
            record.action.as_str().to_owned(),
        ),
        (
            ANNOTATION_LAST_ACTION_AT.to_owned(),
            format_visa_time(record.action_at),
        ),
    ]);
    if let Some(owner) = record.owner() {
        annotations.insert(ANNOTATION_OWNER.to_owned(), owner.to_owned());
    }

    let cpu = Quantity(flavour.cpus.to_string());
    let memory = Quantity(format!("{}Mi", flavour.ram));
    let mut resources = BTreeMap::from([("cpu".to_owned(), cpu), ("memory".to_owned(), memory)]);
    for device in &flavour.devices {
        resources.insert(device.resource.clone(), Quantity(device.count.to_string()));
    }

    let env = instance_env(record, image, settings);

    let ports = container_ports(&image.ports);

    let mut volume_mounts = vec![VolumeMount {
        name: DATA_VOLUME.to_owned(),
        mount_path: settings.volume_mount_path.clone(),
        ..VolumeMount::default()
    }];
    volume_mounts.extend(data.mounts.iter().map(|mount| VolumeMount {
        name: mount.volume_name.clone(),
        mount_path: mount.mount_path.clone(),
        read_only: Some(mount.read_only),
        ..VolumeMount::default()
    }));
    volume_mounts.push(VolumeMount {
        name: CONFIG_VOLUME.to_owned(),
        mount_path: CONFIG_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    let mut volumes = vec![Volume {
        name: CONFIG_VOLUME.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(&record.id),
            default_mode: Some(0o444),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    volumes.extend(data.mounts.iter().map(|mount| Volume {
        name: mount.volume_name.clone(),
        nfs: Some(NFSVolumeSource {
            server: mount.server.clone(),
            path: mount.path.clone(),
            read_only: Some(mount.read_only),
        }),
        ..Volume::default()
    }));
    let security_context = (!data.supplemental_groups.is_empty()).then(|| PodSecurityContext {
        supplemental_groups: Some(data.supplemental_groups.clone()),
        ..PodSecurityContext::default()
    });

    let container = Container {
        name: MAIN_CONTAINER.to_owned(),
        image: Some(image.container_image.clone()),
        image_pull_policy: Some(image.pull_policy.clone()),
        ports: (!ports.is_empty()).then_some(ports),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(volume_mounts),
        lifecycle: Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "/bin/sh".to_owned(),
                        format!("{CONFIG_DIR}/provision.sh"),
                    ]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        ..Container::default()
    };
    let mut containers = vec![container];
    containers.extend(image.sidecars.iter().map(sidecar_container));

    let pull_secrets = settings
        .image_pull_secrets
        .iter()
        .chain(&image.pull_secrets)
        .map(|name| LocalObjectReference { name: name.clone() })
        .collect::<Vec<_>>();
    let mut node_selector = flavour.node_selector.clone();
    if let Some(node) = &record.node {
        node_selector.insert(LABEL_HOSTNAME.to_owned(), node.clone());
    }

    let claim_template = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.to_owned()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: flavour
                .storage_class
                .clone()
                .or_else(|| settings.storage_class.clone()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(format!("{}Gi", flavour.disk)),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };

    StatefulSet {
        metadata: ObjectMeta {
            name: Some(record.id.clone()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(annotations.clone()),
            ..ObjectMeta::default()
        },
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(service_name(&record.id)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(record)),
                ..LabelSelector::default()
            },
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".to_owned()),
                    when_scaled: Some("Retain".to_owned()),
                },
            ),
            volume_claim_templates: Some(vec![claim_template]),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers,
                    image_pull_secrets: (!pull_secrets.is_empty()).then_some(pull_secrets),
                    node_selector: (!node_selector.is_empty()).then_some(node_selector),
                    tolerations: (!flavour.tolerations.is_empty())
                        .then(|| flavour.tolerations.clone()),
                    affinity: flavour.affinity.clone(),
                    volumes: Some(volumes),
                    security_context,
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        },
        status: None,
    }
}

/// Builds the headless Service that the StatefulSet names, with the image's ports.
pub fn service(
    record: &InstanceRecord,
    image: &Image,
    settings: &ObjectSettings,
    owner: Option<&OwnerReference>,
) -> Service {
    let ports = image
        .ports
        .iter()
        .map(|port| ServicePort {
            name: Some(port.name.clone()),
            port: port.port,
            protocol: Some(port.protocol.clone()),
            target_port: Some(IntOrString::Int(port.port)),
            ..ServicePort::default()
        })
        .collect::<Vec<_>>();

    Service {
        metadata: ObjectMeta {
            name: Some(service_name(&record.id)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(instance_labels(record, settings)),
            owner_references: owner.map(|owner| vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(selector_labels(record)),
            ports: (!ports.is_empty()).then_some(ports),
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

pub const CONFIG_VOLUME: &str = "visa-config";
/// Mount path of the instance's ConfigMap: the provisioning script, metadata and PAM key.
pub const CONFIG_DIR: &str = "/etc/visa";
/// The script run after the main container starts; see its header for what it does.
pub const PROVISION_SCRIPT: &str = include_str!("../assets/provision.sh");
/// Metadata keys that carry keys or tokens rather than descriptions; they never become
/// environment variables of their own.
const METADATA_NOT_IN_ENV: [&str; 1] = ["pamPublicKey"];

pub fn config_map_name(id: &str) -> String {
    format!("{id}-visa")
}

/// Turns a metadata key into an environment variable name: `screenWidth` becomes
/// `VISA_METADATA_SCREEN_WIDTH`. Returns `None` when no letter or digit is left.
pub fn metadata_env_name(key: &str) -> Option<String> {
    let mut name = String::from("VISA_METADATA_");
    let start = name.len();
    let mut previous_lower = false;
    for c in key.chars() {
        if c.is_ascii_uppercase() && previous_lower {
            name.push('_');
        }
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_uppercase());
        } else if !name.ends_with('_') {
            name.push('_');
        }
        previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
    }
    let trimmed = name.trim_end_matches('_').len();
    name.truncate(trimmed);
    (name.len() > start).then_some(name)
}

/// Builds the main container's environment: settings, the owner's identity for the
/// provisioning script, the image's own variables, and every metadata entry as data.
fn instance_env(record: &InstanceRecord, image: &Image, settings: &ObjectSettings) -> Vec<EnvVar> {
    let plain = |name: &str, value: &str| EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    };
    let mut env = vec![
        plain("TZ", &settings.time_zone),
        plain("VISA_INSTANCE_ID", &record.id),
        plain("VISA_OWNER", record.owner().unwrap_or_default()),
        plain("VISA_OWNER_UID", &settings.owner_uid.to_string()),
        plain("VISA_HOME_TEMPLATE", &image.home_template),
        plain("VISA_CONFIG_DIR", CONFIG_DIR),
        EnvVar {
            name: "VISA_PAM_PUBLIC_KEY".to_owned(),
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: config_map_name(&record.id),
                    key: "pam-public-key.pem".to_owned(),
                    optional: Some(true),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
    ];
    env.extend(image.env.iter().map(|(name, value)| plain(name, value)));
    for (key, value) in &record.metadata {
        if METADATA_NOT_IN_ENV.contains(&key.as_str()) {
            continue;
        }
        let name = metadata_env_name(key)
            .filter(|name| !env.iter().any(|existing| &existing.name == name));
        if let Some(name) = name {
            env.push(plain(&name, value));
        }
    }
    env
}

fn container_ports(ports: &[ImagePort]) -> Vec<ContainerPort> {
    ports
        .iter()
        .map(|port| ContainerPort {
            name: Some(port.name.clone()),
            container_port: port.port,
            protocol: Some(port.protocol.clone()),
            ..ContainerPort::default()
        })
        .collect()
}

fn sidecar_container(sidecar: &Sidecar) -> Container {
    let ports = container_ports(&sidecar.ports);
    Container {
        name: sidecar.name.clone(),
        image: Some(sidecar.container_image.clone()),
        image_pull_policy: Some(sidecar.pull_policy.clone()),
        ports: (!ports.is_empty()).then_some(ports),
        env: Some(
            sidecar
                .env
                .iter()
                .map(|(name, value)| EnvVar {
                    name: name.clone(),
                    value: Some(value.clone()),
                    ..EnvVar::default()
                })
                .collect(),
        ),
        ..Container::default()
    }
}

/// Groups and sudo right that the provisioning script grants. The script reads them from its
/// files at every start, so a change reaches the instance at its next start without a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provisioning {
    /// Groups the owner joins, as (name, gid).
    pub groups: Vec<(String, i64)>,
    pub sudo: bool,
}

/// Builds the instance's ConfigMap: the provisioning script and its inputs, the metadata as JSON,
/// the PAM public key and the boot command, all as files under `CONFIG_DIR`.
pub fn config_map(
    record: &InstanceRecord,
    provisioning: &Provisioning,
    settings: &ObjectSettings,
    owner: Option<&OwnerReference>,
) -> ConfigMap {
    let groups = provisioning
        .groups
        .iter()
        .map(|(name, gid)| format!("{name}:{gid}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut data = BTreeMap::from([
        ("provision.sh".to_owned(), PROVISION_SCRIPT.to_owned()),
        (
            "metadata.json".to_owned(),
            serde_json::to_string_pretty(&record.metadata).expect("metadata serialises"),
        ),
        ("groups".to_owned(), groups),
        ("sudo".to_owned(), provisioning.sudo.to_string()),
    ]);
    if let Some(key) = record.metadata.get("pamPublicKey") {
        data.insert("pam-public-key.pem".to_owned(), key.clone());
    }
    if let Some(command) = &record.boot_command {
        data.insert("boot-command".to_owned(), command.clone());
    }
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(&record.id)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(owned_labels(&record.id)),
            owner_references: owner.map(|owner| vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// Returns an owner reference to the instance's StatefulSet, so that Kubernetes' garbage
/// collector deletes the objects that carry it with the StatefulSet.
pub fn owner_reference(stateful_set: &StatefulSet) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "apps/v1".to_owned(),
        kind: "StatefulSet".to_owned(),
        name: stateful_set.metadata.name.clone()?,
        uid: stateful_set.metadata.uid.clone()?,
        controller: Some(false),
        block_owner_deletion: Some(false),
    })
}

/// Name of the NetworkPolicy that denies all ingress to an instance not allowed by its groups.
pub fn deny_policy_name(id: &str) -> String {
    format!("{id}-deny-all")
}

/// Name of the NetworkPolicy that opens an instance to one security group's traffic. A hash of
/// the exact group name keeps names that differ only in case or punctuation apart.
pub fn group_policy_name(id: &str, group: &str) -> String {
    let slug: String = label_value(&group.to_ascii_lowercase())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!(
        "{id}-sg-{}-{:08x}",
        slug.trim_matches('-'),
        short_hash(group)
    )
}

/// Builds the instance's NetworkPolicies: one that denies all ingress, and one per security group
/// that allows the group's rules. Each selects only this instance's pod, so adding or removing
/// a group changes traffic at once, without touching the pod.
pub fn network_policies(
    record: &InstanceRecord,
    groups: &[&SecurityGroup],
    settings: &ObjectSettings,
    owner: Option<&OwnerReference>,
) -> Vec<NetworkPolicy> {
    let owner_references = owner.map(|owner| vec![owner.clone()]);
    let pod_selector = LabelSelector {
        match_labels: Some(selector_labels(record)),
        ..LabelSelector::default()
    };
    let labels = |group: Option<&str>| {
        let mut labels = owned_labels(&record.id);
        if let Some(group) = group {
            labels.insert(LABEL_SECURITY_GROUP.to_owned(), label_value(group));
        }
        labels
    };

    let mut policies = vec![NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(deny_policy_name(&record.id)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels(None)),
            owner_references: owner_references.clone(),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector.clone()),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: None,
            egress: None,
        }),
    }];

    for group in groups {
        let rules = group
            .ingress
            .iter()
            .map(|rule| NetworkPolicyIngressRule {
                ports: (!rule.ports.is_empty()).then(|| {
                    rule.ports
                        .iter()
                        .map(|port| NetworkPolicyPort {
                            port: Some(IntOrString::Int(*port)),
                            protocol: Some("TCP".to_owned()),
                            end_port: None,
                        })
                        .collect()
                }),
                from: (!rule.from.is_empty()).then(|| {
                    rule.from
                        .iter()
                        .map(|cidr| NetworkPolicyPeer {
                            ip_block: Some(IPBlock {
                                cidr: cidr.clone(),
                                except: None,
                            }),
                            ..NetworkPolicyPeer::default()
                        })
                        .collect()
                }),
            })
            .collect::<Vec<_>>();
        let mut annotations = BTreeMap::new();
        annotations.insert(ANNOTATION_SECURITY_GROUP.to_owned(), group.name.clone());
        policies.push(NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(group_policy_name(&record.id, &group.name)),
                namespace: Some(settings.namespace.clone()),
                labels: Some(labels(Some(&group.name))),
                annotations: Some(annotations),
                owner_references: owner_references.clone(),
                ..ObjectMeta::default()
            },
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(pod_selector.clone()),
                policy_types: Some(vec!["Ingress".to_owned()]),
                ingress: Some(rules),
                egress: None,
            }),
        });
    }
    policies
}

/// Labels of the ConfigMap and NetworkPolicies that one instance owns.
fn owned_labels(id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_INSTANCE_ID.to_owned(), id.to_owned()),
    ])
}

/// Selects the ConfigMap and NetworkPolicies that one instance owns.
pub fn owned_object_selector(id: &str) -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INSTANCE_ID}={id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{FlavourDevice, ImagePort, IngressRule};
    use crate::model::{Action, DesiredState};

    fn record() -> InstanceRecord {
        InstanceRecord {
            id: "visa-instance-1042".to_owned(),
            name: "VISA_INSTANCE-1042".to_owned(),
            image_id: "desktop".to_owned(),
            flavour_id: "medium".to_owned(),
            security_groups: vec!["DEFAULT".to_owned()],
            metadata: BTreeMap::from([
                ("owner".to_owned(), "o'brien; rm -rf /".to_owned()),
                ("uid".to_owned(), "k3v9x2mq".to_owned()),
            ]),
            boot_command: None,
            node: None,
            desired: DesiredState::Running,
            action: Action::Reboot,
            action_at: 1_796_396_204_123,
            action_seq: 3,
            applied_seq: 2,
            created_at: 1_796_396_000_000,
            first_ready_at: None,
            deleted_at: None,
            fault: None,
            updated_at: 1_796_396_204_123,
        }
    }

    fn flavour() -> Flavour {
        Flavour {
            id: "medium".to_owned(),
            name: "Medium".to_owned(),
            cpus: 4,
            ram: 16384,
            disk: 50,
            devices: vec![FlavourDevice {
                resource: "nvidia.com/gpu".to_owned(),
                count: 2,
            }],
            storage_class: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
        }
    }

    fn image() -> Image {
        Image {
            id: "desktop".to_owned(),
            name: "Desktop".to_owned(),
            container_image: "registry.example.org/visa/desktop:1".to_owned(),
            pull_policy: "Always".to_owned(),
            size: None,
            ports: vec![ImagePort {
                name: "rdp".to_owned(),
                port: 3389,
                protocol: "TCP".to_owned(),
            }],
            env: BTreeMap::new(),
            home_template: "/etc/skel".to_owned(),
            pull_secrets: Vec::new(),
            sidecars: Vec::new(),
        }
    }

    #[test]
    fn id_from_visa_names() {
        assert_eq!(
            id_from_name("VISA_INSTANCE-1042").as_deref(),
            Some("visa-instance-1042")
        );
        assert_eq!(
            id_from_name("VISA-INSTANCE-7").as_deref(),
            Some("visa-instance-7")
        );
        assert_eq!(id_from_name("__a__b__").as_deref(), Some("a-b"));
        assert_eq!(id_from_name("éé"), None);
        assert_eq!(
            id_from_name(&"x".repeat(300)).map(|id| id.len()),
            Some(MAX_ID_LENGTH)
        );
    }

    #[test]
    fn label_value_of_hostile_owner() {
        assert_eq!(label_value("o'brien; rm -rf /"), "o_brien__rm_-rf");
        assert_eq!(label_value(&"a".repeat(100)).len(), 63);
        assert_eq!(label_value("$()"), "");
    }

    #[test]
    fn stateful_set_matches_flavour_and_image() {
        let set = stateful_set(
            &record(),
            &flavour(),
            &image(),
            &ObjectSettings::default(),
            &DataMounts::default(),
            1,
        );
        let spec = set.spec;
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.service_name.as_deref(), Some("visa-instance-1042-svc"));

        let retention = spec.persistent_volume_claim_retention_policy.unwrap();
        assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
        assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));

        let claim = &spec.volume_claim_templates.unwrap()[0];
        let storage = &claim
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests;
        assert_eq!(storage.as_ref().unwrap()["storage"].0, "50Gi");

        let pod = spec.template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.name, MAIN_CONTAINER);
        assert_eq!(container.image_pull_policy.as_deref(), Some("Always"));
        let resources = container.resources.as_ref().unwrap();
        assert_eq!(resources.requests, resources.limits);
        assert_eq!(resources.limits.as_ref().unwrap()["cpu"].0, "4");
        assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "16384Mi");
        assert_eq!(resources.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "2");
        assert_eq!(pod.node_selector, None);
        assert_eq!(container.ports.as_ref().unwrap()[0].container_port, 3389);
        let tz = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|env| env.name == "TZ");
        assert_eq!(tz.unwrap().value.as_deref(), Some("UTC"));

        let annotations = spec.template.metadata.unwrap().annotations.unwrap();
        assert_eq!(annotations[ANNOTATION_LAST_ACTION], "reboot");
        assert_eq!(
            annotations[ANNOTATION_LAST_ACTION_AT],
            "2026-12-04T14:56:44.123Z"
        );
        assert_eq!(annotations[ANNOTATION_OWNER], "o'brien; rm -rf /");
    }

    #[test]
    fn labels_are_valid_values() {
        let set = stateful_set(
            &record(),
            &flavour(),
            &image(),
            &ObjectSettings::default(),
            &DataMounts::default(),
            0,
        );
        let labels = set.metadata.labels.unwrap();
        assert_eq!(
            labels[LABEL_OWNER],
            format!("o_brien__rm_-rf-{:08x}", short_hash("o'brien; rm -rf /"))
        );
        assert_eq!(labels[LABEL_NAME], "VISA_INSTANCE-1042");
        assert_eq!(labels[LABEL_INSTANCE_ID], "visa-instance-1042");
        for value in labels.values() {
            assert!(value.len() <= 63, "{value}");
        }
    }

    #[test]
    fn distinct_label_values_stay_apart() {
        assert_eq!(distinct_label_value("jdoe"), "jdoe");
        let values = ["jdoe.", "_jdoe", "jdoe-", "jdoe"].map(distinct_label_value);
        for (index, value) in values.iter().enumerate() {
            assert!(value.len() <= 63, "{value}");
            assert!(
                value.starts_with(|c: char| c.is_ascii_alphanumeric()),
                "{value}"
            );
            assert!(!values[index + 1..].contains(value), "{values:?}");
        }
        assert_eq!(distinct_label_value("$()").len(), 9);
        assert_eq!(distinct_label_value(&"é".repeat(100)).len(), 9);
        assert!(distinct_label_value(&format!("{}!", "a".repeat(100))).len() <= 63);
    }

    #[test]
    fn migration_pins_node() {
        let mut record = record();
        record.node = Some("kwok-node-1".to_owned());
        let set = stateful_set(
            &record,
            &flavour(),
            &image(),
            &ObjectSettings::default(),
            &DataMounts::default(),
            1,
        );
        let selector = set.spec.template.spec.unwrap().node_selector.unwrap();
        assert_eq!(selector[LABEL_HOSTNAME], "kwok-node-1");
    }

    #[test]
    fn policies_deny_then_allow_groups() {
        let group = SecurityGroup {
            name: "BL13-XALOC".to_owned(),
            ingress: vec![IngressRule {
                ports: vec![3389],
                from: vec!["10.0.0.0/8".to_owned()],
            }],
            grants_sudo: false,
        };
        let policies = network_policies(&record(), &[&group], &ObjectSettings::default(), None);
        assert_eq!(policies.len(), 2);
        let deny = policies[0].spec.as_ref().unwrap();
        assert_eq!(deny.ingress, None);
        let allow = policies[1].spec.as_ref().unwrap();
        let rule = &allow.ingress.as_ref().unwrap()[0];
        assert_eq!(
            rule.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(3389))
        );
        assert_eq!(
            rule.from.as_ref().unwrap()[0]
                .ip_block
                .as_ref()
                .unwrap()
                .cidr,
            "10.0.0.0/8"
        );
        let selector = allow
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(selector[LABEL_INSTANCE_ID], "visa-instance-1042");
    }

    #[test]
    fn group_policy_names_stay_apart() {
        let upper = group_policy_name("visa-instance-1", "DEFAULT");
        let lower = group_policy_name("visa-instance-1", "default");
        assert_ne!(upper, lower);
        assert!(upper.starts_with("visa-instance-1-sg-default-"), "{upper}");
        assert!(group_policy_name("i", &"x".repeat(300)).len() < 63);
    }

    #[test]
    fn metadata_env_names() {
        assert_eq!(
            metadata_env_name("screenWidth").as_deref(),
            Some("VISA_METADATA_SCREEN_WIDTH")
        );
        assert_eq!(metadata_env_name("id").as_deref(), Some("VISA_METADATA_ID"));
        assert_eq!(
            metadata_env_name("beam line (main)").as_deref(),
            Some("VISA_METADATA_BEAM_LINE_MAIN")
        );
        assert_eq!(metadata_env_name("$()"), None);
        assert_eq!(metadata_env_name("é"), None);
    }

    #[test]
    fn config_map_carries_provisioning() {
        let provisioning = Provisioning {
            groups: vec![("p1".to_owned(), 5001), ("p2".to_owned(), 5002)],
            sudo: true,
        };
        let map = config_map(&record(), &provisioning, &ObjectSettings::default(), None);
        let data = map.data.unwrap();
        assert_eq!(data["groups"], "p1:5001,p2:5002");
        assert_eq!(data["sudo"], "true");
        assert_eq!(data["provision.sh"], PROVISION_SCRIPT);
        assert!(!data.contains_key("boot-command"));
    }

    #[test]
    fn stateful_set_without_data_has_no_nfs() {
        let set = stateful_set(
            &record(),
            &flavour(),
            &image(),
            &ObjectSettings::default(),
            &DataMounts::default(),
            1,
        );
        let pod = set.spec.template.spec.unwrap();
        let volumes = pod.volumes.unwrap();
        assert_eq!(volumes.len(), 1, "only the instance's ConfigMap");
        assert_eq!(volumes[0].name, CONFIG_VOLUME);
        assert_eq!(pod.security_context, None);
        assert_eq!(pod.containers[0].volume_mounts.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn stateful_set_mounts_investigation_data() {
        let data = DataMounts {
            mounts: vec![
                DataMount {
                    volume_name: "investigation-0".to_owned(),
                    proposal: "2025096612".to_owned(),
                    server: "nfs.example.org".to_owned(),
                    path: "/data/2025096612".to_owned(),
                    mount_path: "/data/2025096612".to_owned(),
                    read_only: true,
                },
                DataMount {
                    volume_name: "investigation-1".to_owned(),
                    proposal: "2025097120".to_owned(),
                    server: "nfs.example.org".to_owned(),
                    path: "/data/2025097120".to_owned(),
                    mount_path: "/proposals/2025097120".to_owned(),
                    read_only: false,
                },
            ],
            supplemental_groups: vec![5001, 5002],
        };
        let set = stateful_set(
            &record(),
            &flavour(),
            &image(),
            &ObjectSettings::default(),
            &data,
            1,
        );
        let pod = set.spec.template.spec.unwrap();

        let volumes = pod.volumes.unwrap();
        assert_eq!(volumes.len(), 3);
        assert_eq!(volumes[0].name, CONFIG_VOLUME);
        let nfs = volumes[2].nfs.as_ref().unwrap();
        assert_eq!(volumes[2].name, "investigation-1");
        assert_eq!(nfs.server, "nfs.example.org");
        assert_eq!(nfs.path, "/data/2025097120");
        assert_eq!(nfs.read_only, Some(false));
        assert_eq!(volumes[1].nfs.as_ref().unwrap().read_only, Some(true));

        let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
        assert_eq!(mounts[0].name, DATA_VOLUME, "the user's volume stays first");
        assert_eq!(mounts[1].name, "investigation-0");
        assert_eq!(mounts[1].mount_path, "/data/2025096612");
        assert_eq!(mounts[1].read_only, Some(true));
        assert_eq!(mounts[2].mount_path, "/proposals/2025097120");
        assert_eq!(mounts[2].read_only, Some(false));

        let groups = pod.security_context.unwrap().supplemental_groups.unwrap();
        assert_eq!(groups, [5001, 5002]);
    }

    #[test]
    fn service_is_headless() {
        let service = service(&record(), &image(), &ObjectSettings::default(), None);
        let spec = service.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.ports.unwrap()[0].port, 3389);
    }
}
