//! The instance model and the JSON shapes of VISA's web provider API.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, the one time unit stored in the database.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    Utc::now().timestamp_millis()
}

/// Formats a time the way VISA parses it: ISO-8601 in UTC with milliseconds.
pub fn format_visa_time(millis: Millis) -> String {
    let time: DateTime<Utc> = Utc
        .timestamp_millis_opt(millis)
        .single()
        .unwrap_or_default();
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The state words VISA accepts. Any other word makes VISA's parser fail, which VISA reads as
/// "deleted", so this enum is the only way a state reaches a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    Unknown,
    Building,
    Starting,
    Active,
    ActiveMigrating,
    Stopping,
    Stopped,
    Rebooting,
    Migrating,
    Unavailable,
    Error,
    Deleted,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "UNKNOWN",
            Self::Building => "BUILDING",
            Self::Starting => "STARTING",
            Self::Active => "ACTIVE",
            Self::ActiveMigrating => "ACTIVE_MIGRATING",
            Self::Stopping => "STOPPING",
            Self::Stopped => "STOPPED",
            Self::Rebooting => "REBOOTING",
            Self::Migrating => "MIGRATING",
            Self::Unavailable => "UNAVAILABLE",
            Self::Error => "ERROR",
            Self::Deleted => "DELETED",
        }
    }
}

/// The state that the last action requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Running,
    Stopped,
    Deleted,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Deleted => "deleted",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "running" => Some(Self::Running),
            "stopped" => Some(Self::Stopped),
            "deleted" => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// The last action commanded on an instance. Its word is stamped on the pod template as
/// `visa-cloud-provider/last_commanded_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Start,
    Stop,
    Reboot,
    Migrate,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Reboot => "reboot",
            Self::Migrate => "migrate",
            Self::Delete => "delete",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "create" => Some(Self::Create),
            "start" => Some(Self::Start),
            "stop" => Some(Self::Stop),
            "reboot" => Some(Self::Reboot),
            "migrate" => Some(Self::Migrate),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }

    /// Returns the state that this action requests.
    pub fn desired_state(self) -> DesiredState {
        match self {
            Self::Create | Self::Start | Self::Reboot | Self::Migrate => DesiredState::Running,
            Self::Stop => DesiredState::Stopped,
            Self::Delete => DesiredState::Deleted,
        }
    }
}

/// A fault recorded by a worker whose job failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedFault {
    pub message: String,
    pub details: String,
    pub at: Millis,
}

/// One instance as the database stores it: what VISA asked for and what the workers did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    /// The provider's id, a DNS-1123 label that also names the instance's Kubernetes objects.
    pub id: String,
    /// Exactly the name VISA sent.
    pub name: String,
    pub image_id: String,
    pub flavour_id: String,
    pub security_groups: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub boot_command: Option<String>,
    /// Node the instance is pinned to by its last migration.
    pub node: Option<String>,
    pub desired: DesiredState,
    pub action: Action,
    pub action_at: Millis,
    /// Increases with every action; a job converges to the record, whatever its own sequence.
    pub action_seq: i64,
    /// The highest sequence a worker has finished, successfully or with a fault.
    pub applied_seq: i64,
    pub created_at: Millis,
    pub first_ready_at: Option<Millis>,
    /// Set once the StatefulSet is gone after a delete; the API then returns 404.
    pub deleted_at: Option<Millis>,
    pub fault: Option<RecordedFault>,
    pub updated_at: Millis,
}

impl InstanceRecord {
    pub fn owner(&self) -> Option<&str> {
        self.metadata.get("owner").map(String::as_str)
    }
}

/// `fault` of an instance in VISA's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub message: String,
    pub code: i64,
    pub details: String,
    pub created: String,
}

/// An instance in VISA's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub state: InstanceState,
    pub address: Option<String>,
    pub image_id: String,
    pub flavour_id: String,
    pub created_at: String,
    pub fault: Option<Fault>,
    pub security_groups: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub boot_command: Option<String>,
}

/// The body of `POST /api/instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateInstance {
    pub name: String,
    pub image_id: String,
    pub flavour_id: String,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub boot_command: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visa_time_has_milliseconds_and_zulu() {
        assert_eq!(
            format_visa_time(1_796_396_204_123),
            "2026-12-04T14:56:44.123Z"
        );
        assert_eq!(format_visa_time(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn state_words_match_serde() {
        for state in [
            InstanceState::Unknown,
            InstanceState::Building,
            InstanceState::ActiveMigrating,
            InstanceState::Deleted,
        ] {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
    }

    #[test]
    fn action_words_round_trip() {
        for action in [
            Action::Create,
            Action::Start,
            Action::Stop,
            Action::Reboot,
            Action::Delete,
        ] {
            assert_eq!(Action::parse(action.as_str()), Some(action));
        }
        assert_eq!(Action::parse("resize"), None);
    }

    #[test]
    fn create_request_parses_example() {
        let body = include_str!("../../tests/fixtures/create-instance.request.json");
        let request: CreateInstance = serde_json::from_str(body).unwrap();
        assert!(request.name.starts_with("VISA"));
        assert!(request.metadata.contains_key("owner"));
    }
}
