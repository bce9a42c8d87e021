//! The catalogue of flavours, images and security groups that VISA may choose from, read from
//! a YAML file that the operators keep.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use k8s_openapi::api::core::v1::{Affinity, Toleration};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("failed to read the catalogue file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid catalogue file {path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("invalid catalogue: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Catalogue {
    pub flavours: Vec<Flavour>,
    pub images: Vec<Image>,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
    /// Extended resources that flavours may request, such as GPUs or MIG slices.
    #[serde(default)]
    pub devices: Vec<Device>,
}

/// A size of instance. VISA spells it "flavour".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Flavour {
    pub id: String,
    pub name: String,
    pub cpus: i64,
    /// Memory in MiB.
    pub ram: i64,
    /// Size of the user's volume in GiB.
    pub disk: i64,
    /// Devices each instance of this flavour gets, in its pod's requests and limits.
    #[serde(default)]
    pub devices: Vec<FlavourDevice>,
    /// StorageClass of the user's volume; the site's default class when unset.
    #[serde(default)]
    pub storage_class: Option<String>,
    /// Node labels that the pod requires, such as a GPU model.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pod tolerates, in Kubernetes' own shape.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// Node and pod affinity of the pod, in Kubernetes' own shape.
    #[serde(default)]
    pub affinity: Option<Affinity>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlavourDevice {
    /// Extended resource name, for example `nvidia.com/gpu`.
    pub resource: String,
    pub count: i64,
}

/// The VISA device type of an extended resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeviceType {
    PciPassthrough,
    VirtualGpu,
}

impl DeviceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PciPassthrough => "PCI_PASSTHROUGH",
            Self::VirtualGpu => "VIRTUAL_GPU",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    /// Extended resource name that a device plugin advertises on nodes.
    pub resource: String,
    #[serde(rename = "type")]
    pub device_type: DeviceType,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Image {
    pub id: String,
    pub name: String,
    /// The container image reference, for example `registry.example.org/visa/desktop:24.04`.
    pub container_image: String,
    #[serde(default = "default_pull_policy")]
    pub pull_policy: String,
    /// Size in bytes shown to VISA, when known.
    #[serde(default)]
    pub size: Option<i64>,
    #[serde(default)]
    pub ports: Vec<ImagePort>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Directory of the image copied into a new home directory.
    #[serde(default = "default_home_template")]
    pub home_template: String,
    /// Secrets in the instances' namespace used to pull this image, besides the site's own.
    #[serde(default)]
    pub pull_secrets: Vec<String>,
    /// Companion containers in the same pod, such as a file API or a print server.
    #[serde(default)]
    pub sidecars: Vec<Sidecar>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sidecar {
    pub name: String,
    pub container_image: String,
    #[serde(default = "default_pull_policy")]
    pub pull_policy: String,
    #[serde(default)]
    pub ports: Vec<ImagePort>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImagePort {
    pub name: String,
    pub port: i32,
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityGroup {
    pub name: String,
    /// Traffic this group lets in. An instance with no group accepts no traffic.
    #[serde(default)]
    pub ingress: Vec<IngressRule>,
    /// Whether the owner gets sudo in instances that hold this group, from their next start.
    #[serde(default)]
    pub grants_sudo: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// TCP ports; all ports when empty.
    #[serde(default)]
    pub ports: Vec<i32>,
    /// Source CIDR blocks, such as `10.0.0.0/8`; any source when empty.
    #[serde(default)]
    pub from: Vec<String>,
}

fn default_pull_policy() -> String {
    "IfNotPresent".to_owned()
}

fn default_home_template() -> String {
    "/etc/skel".to_owned()
}

fn default_protocol() -> String {
    "TCP".to_owned()
}

const PULL_POLICIES: [&str; 3] = ["Always", "IfNotPresent", "Never"];
const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

impl Catalogue {
    /// Reads and checks a catalogue file.
    pub fn load(path: &Path) -> Result<Self, CatalogueError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CatalogueError::Read {
            path: display.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|error| match error {
            CatalogueError::Parse { source, .. } => CatalogueError::Parse {
                path: display,
                source,
            },
            other => other,
        })
    }

    /// Parses and checks catalogue YAML.
    pub fn parse(text: &str) -> Result<Self, CatalogueError> {
        let catalogue: Catalogue =
            serde_yaml::from_str(text).map_err(|source| CatalogueError::Parse {
                path: "<text>".to_owned(),
                source,
            })?;
        catalogue.validate()?;
        Ok(catalogue)
    }

    pub fn flavour(&self, id: &str) -> Option<&Flavour> {
        self.flavours.iter().find(|flavour| flavour.id == id)
    }

    pub fn image(&self, id: &str) -> Option<&Image> {
        self.images.iter().find(|image| image.id == id)
    }

    pub fn has_security_group(&self, name: &str) -> bool {
        self.security_group(name).is_some()
    }

    pub fn security_group(&self, name: &str) -> Option<&SecurityGroup> {
        self.security_groups.iter().find(|group| group.name == name)
    }

    pub fn device(&self, resource: &str) -> Option<&Device> {
        self.devices
            .iter()
            .find(|device| device.resource == resource)
    }

    fn validate(&self) -> Result<(), CatalogueError> {
        let invalid = |message: String| Err(CatalogueError::Invalid(message));

        let mut ids = HashSet::new();
        for flavour in &self.flavours {
            check_id("flavour", &flavour.id)?;
            if !ids.insert(flavour.id.as_str()) {
                return invalid(format!(
                    "flavour id {:?} appears twice: give each flavour its own id",
                    flavour.id
                ));
            }
            for (field, value) in [
                ("cpus", flavour.cpus),
                ("ram", flavour.ram),
                ("disk", flavour.disk),
            ] {
                if value <= 0 {
                    return invalid(format!(
                        "flavour {:?} has {field} {value}: set a positive number",
                        flavour.id
                    ));
                }
            }
        }

        let mut ids = HashSet::new();
        for image in &self.images {
            check_id("image", &image.id)?;
            if !ids.insert(image.id.as_str()) {
                return invalid(format!(
                    "image id {:?} appears twice: give each image its own id",
                    image.id
                ));
            }
            if image.container_image.trim().is_empty() {
                return invalid(format!(
                    "image {:?} has an empty containerImage: set the container image reference",
                    image.id
                ));
            }
            if !PULL_POLICIES.contains(&image.pull_policy.as_str()) {
                return invalid(format!(
                    "image {:?} has pullPolicy {:?}: use one of {}",
                    image.id,
                    image.pull_policy,
                    PULL_POLICIES.join(", ")
                ));
            }
            if !image.home_template.starts_with('/') {
                return invalid(format!(
                    "image {:?} has homeTemplate {:?}: use an absolute path such as /etc/skel",
                    image.id, image.home_template
                ));
            }
            let mut container_names = HashSet::from(["visa-instance-container"]);
            for sidecar in &image.sidecars {
                if !is_dns_label(&sidecar.name) || !container_names.insert(sidecar.name.as_str()) {
                    return invalid(format!(
                        "image {:?} has sidecar name {:?}: use a unique lower-case DNS label",
                        image.id, sidecar.name
                    ));
                }
                if !PULL_POLICIES.contains(&sidecar.pull_policy.as_str()) {
                    return invalid(format!(
                        "image {:?} sidecar {:?} has pullPolicy {:?}: use one of {}",
                        image.id,
                        sidecar.name,
                        sidecar.pull_policy,
                        PULL_POLICIES.join(", ")
                    ));
                }
            }
            for port in image
                .ports
                .iter()
                .chain(image.sidecars.iter().flat_map(|sidecar| &sidecar.ports))
            {
                if !(1..=65535).contains(&port.port) {
                    return invalid(format!(
                        "image {:?} has port {}: use a number from 1 to 65535",
                        image.id, port.port
                    ));
                }
                if !PROTOCOLS.contains(&port.protocol.as_str()) {
                    return invalid(format!(
                        "image {:?} port {:?} has protocol {:?}: use one of {}",
                        image.id,
                        port.name,
                        port.protocol,
                        PROTOCOLS.join(", ")
                    ));
                }
            }
        }

        let mut resources = HashSet::new();
        for device in &self.devices {
            check_resource_name(&device.resource)?;
            if !resources.insert(device.resource.as_str()) {
                return invalid(format!("device {:?} appears twice", device.resource));
            }
        }
        for flavour in &self.flavours {
            for device in &flavour.devices {
                if !resources.contains(device.resource.as_str()) {
                    return invalid(format!(
                        "flavour {:?} asks for device {:?}, which is not in devices: add it there with its type",
                        flavour.id, device.resource
                    ));
                }
                if device.count <= 0 {
                    return invalid(format!(
                        "flavour {:?} asks for {} of device {:?}: set a positive count",
                        flavour.id, device.count, device.resource
                    ));
                }
            }
        }

        let mut names = HashSet::new();
        for group in &self.security_groups {
            if group.name.trim().is_empty() {
                return invalid("a security group has an empty name: give it a name".to_owned());
            }
            if !names.insert(group.name.as_str()) {
                return invalid(format!("security group {:?} appears twice", group.name));
            }
            for rule in &group.ingress {
                if let Some(port) = rule.ports.iter().find(|port| !(1..=65535).contains(*port)) {
                    return invalid(format!(
                        "security group {:?} has port {port}: use a number from 1 to 65535",
                        group.name
                    ));
                }
                if let Some(cidr) = rule.from.iter().find(|cidr| !valid_cidr(cidr)) {
                    return invalid(format!(
                        "security group {:?} has source {cidr:?}: use a CIDR block such as 10.0.0.0/8",
                        group.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks a Kubernetes extended resource name: a domain prefix, a slash and a name.
fn check_resource_name(resource: &str) -> Result<(), CatalogueError> {
    let valid = resource.split_once('/').is_some_and(|(domain, name)| {
        !domain.is_empty()
            && domain.contains('.')
            && !name.is_empty()
            && domain
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    });
    if valid {
        Ok(())
    } else {
        Err(CatalogueError::Invalid(format!(
            "device {resource:?} is not an extended resource name: use the form vendor.com/name, such as nvidia.com/gpu"
        )))
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn valid_cidr(cidr: &str) -> bool {
    let Some((address, prefix)) = cidr.split_once('/') else {
        return false;
    };
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix.parse::<u8>().is_ok_and(|bits| bits <= 32),
        Ok(std::net::IpAddr::V6(_)) => prefix.parse::<u8>().is_ok_and(|bits| bits <= 128),
        Err(_) => false,
    }
}

fn check_id(kind: &str, id: &str) -> Result<(), CatalogueError> {
    let valid = !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(CatalogueError::Invalid(format!(
            "{kind} id {id:?} is invalid: use 1 to 63 letters, digits, '-', '_' or '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config/catalogue.example.yaml");

    #[test]
    fn example_catalogue_loads() {
        let catalogue = Catalogue::parse(EXAMPLE).unwrap();
        assert!(catalogue.flavour("medium").is_some());
        assert!(catalogue.image("ubuntu-desktop-24-04").is_some());
        assert!(catalogue.has_security_group("DEFAULT"));
    }

    #[test]
    fn duplicate_flavour_is_rejected() {
        let text = "flavours:\n- {id: a, name: A, cpus: 1, ram: 1, disk: 1}\n- {id: a, name: B, cpus: 1, ram: 1, disk: 1}\nimages: []\n";
        let error = Catalogue::parse(text).unwrap_err().to_string();
        assert!(error.contains("\"a\" appears twice"), "{error}");
    }

    #[test]
    fn zero_cpus_is_rejected() {
        let text = "flavours:\n- {id: a, name: A, cpus: 0, ram: 1, disk: 1}\nimages: []\n";
        let error = Catalogue::parse(text).unwrap_err().to_string();
        assert!(error.contains("cpus 0"), "{error}");
    }

    #[test]
    fn unknown_pull_policy_is_rejected() {
        let text =
            "flavours: []\nimages:\n- {id: i, name: I, containerImage: x, pullPolicy: Sometimes}\n";
        let error = Catalogue::parse(text).unwrap_err().to_string();
        assert!(error.contains("\"Sometimes\""), "{error}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let text = "flavours: []\nimages: []\ngpus: []\n";
        let error = Catalogue::parse(text).unwrap_err().to_string();
        assert!(error.contains("gpus"), "{error}");
    }

    #[test]
    fn flavour_device_must_be_declared() {
        let text = "flavours:\n- {id: g, name: G, cpus: 1, ram: 1, disk: 1, devices: [{resource: nvidia.com/gpu, count: 1}]}\nimages: []\n";
        let error = Catalogue::parse(text).unwrap_err().to_string();
        assert!(error.contains("not in devices"), "{error}");
    }

    #[test]
    fn device_name_is_checked() {
        let text = "flavours: []\nimages: []\ndevices: [{resource: gpu, type: PCI_PASSTHROUGH}]\n";
        let error = Catalogue::parse(text).unwrap_err().to_string();
        assert!(error.contains("vendor.com/name"), "{error}");
        let text = "flavours: []\nimages: []\ndevices: [{resource: nvidia.com/gpu, type: GPU}]\n";
        assert!(Catalogue::parse(text).is_err());
    }

    #[test]
    fn bad_source_cidr_is_rejected() {
        let text = "flavours: []\nimages: []\nsecurityGroups: [{name: A, ingress: [{ports: [22], from: [10.0.0.0/33]}]}]\n";
        let error = Catalogue::parse(text).unwrap_err().to_string();
        assert!(error.contains("10.0.0.0/33"), "{error}");
        assert!(valid_cidr("10.0.0.0/8"));
        assert!(valid_cidr("fd00::/64"));
        assert!(!valid_cidr("10.0.0.0"));
    }

    #[test]
    fn sidecar_names_are_unique_labels() {
        let text = "flavours: []\nimages:\n- {id: i, name: I, containerImage: x, sidecars: [{name: Print_Server, containerImage: y}]}\n";
        let error = Catalogue::parse(text).unwrap_err().to_string();
        assert!(error.contains("Print_Server"), "{error}");
        let text = "flavours: []\nimages:\n- {id: i, name: I, containerImage: x, sidecars: [{name: visa-instance-container, containerImage: y}]}\n";
        assert!(Catalogue::parse(text).is_err());
    }

    #[test]
    fn flavour_scheduling_parses() {
        let text = "flavours:\n- id: g\n  name: G\n  cpus: 1\n  ram: 1\n  disk: 1\n  storageClass: fast\n  nodeSelector: {gpu: a100}\n  tolerations: [{key: gpu, operator: Exists, effect: NoSchedule}]\nimages: []\n";
        let catalogue = Catalogue::parse(text).unwrap();
        let flavour = catalogue.flavour("g").unwrap();
        assert_eq!(flavour.storage_class.as_deref(), Some("fast"));
        assert_eq!(flavour.tolerations[0].operator.as_deref(), Some("Exists"));
    }

    #[test]
    fn invalid_id_is_rejected() {
        let text = "flavours:\n- {id: 'a b', name: A, cpus: 1, ram: 1, disk: 1}\nimages: []\n";
        let error = Catalogue::parse(text).unwrap_err().to_string();
        assert!(error.contains("\"a b\" is invalid"), "{error}");
    }
}
