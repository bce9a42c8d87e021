//! The catalogue of flavours, images and security groups that VISA may choose from, read from
//! a YAML file that the operators keep.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Catalogue {
    pub flavours: Vec<Flavour>,
    pub images: Vec<Image>,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
}

/// A size of instance. VISA spells it "flavour".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Flavour {
    pub id: String,
    pub name: String,
    pub cpus: i64,
    /// Memory in MiB.
    pub ram: i64,
    /// Size of the user's volume in GiB.
    pub disk: i64,
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
}

fn default_pull_policy() -> String {
    "IfNotPresent".to_owned()
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
        self.security_groups.iter().any(|group| group.name == name)
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
            for port in &image.ports {
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

        let mut names = HashSet::new();
        for group in &self.security_groups {
            if group.name.trim().is_empty() {
                return invalid("a security group has an empty name: give it a name".to_owned());
            }
            if !names.insert(group.name.as_str()) {
                return invalid(format!("security group {:?} appears twice", group.name));
            }
        }
        Ok(())
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
    fn invalid_id_is_rejected() {
        let text = "flavours:\n- {id: 'a b', name: A, cpus: 1, ram: 1, disk: 1}\nimages: []\n";
        let error = Catalogue::parse(text).unwrap_err().to_string();
        assert!(error.contains("\"a b\" is invalid"), "{error}");
    }
}
