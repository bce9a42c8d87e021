//! Response shapes parsed as strictly as VISA's client parses them: every enum word must be
//! known, integers must be integers, and times must be ISO-8601 in UTC with milliseconds.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
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

#[derive(Debug, Deserialize)]
pub struct Fault {
    pub message: String,
    pub code: i64,
    pub details: String,
    pub created: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub state: State,
    pub address: Option<String>,
    pub image_id: String,
    pub flavour_id: String,
    pub created_at: String,
    pub fault: Option<Fault>,
    pub security_groups: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub boot_command: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Identifier {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub size: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct Flavour {
    pub id: String,
    pub name: String,
    pub cpus: i64,
    pub ram: i64,
    pub disk: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub max_total_ram_size: i64,
    pub total_ram_used: i64,
    pub max_total_instances: i64,
    pub total_instances_used: i64,
    pub max_total_cores: i64,
    pub total_cores_used: i64,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeviceType {
    PciPassthrough,
    VirtualGpu,
}

#[derive(Debug, Deserialize)]
pub struct Device {
    pub identifier: String,
    #[serde(rename = "type")]
    pub device_type: DeviceType,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceAllocation {
    pub flavour_id: String,
    pub device: Device,
    pub unit_count: i64,
}

#[derive(Debug, Deserialize)]
pub struct Hypervisor {
    pub id: String,
    pub hostname: String,
    pub state: String,
    pub status: String,
}

#[derive(Debug, Deserialize)]
pub struct HypervisorInventory {
    pub hypervisor: Hypervisor,
    pub inventory: BTreeMap<String, i64>,
}

#[derive(Debug, Deserialize)]
pub struct HypervisorUsage {
    pub hypervisor: Hypervisor,
    pub usage: BTreeMap<String, i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    pub server_compute_id: String,
}

#[derive(Debug, Deserialize)]
pub struct HypervisorAllocation {
    pub hypervisor: Hypervisor,
    pub allocations: Vec<Allocation>,
}

/// Parses a body strictly into `T`, panicking with the body when VISA could not parse it.
pub fn parse<T: DeserializeOwned>(body: &str) -> T {
    serde_json::from_str(body)
        .unwrap_or_else(|error| panic!("VISA could not parse {body}: {error}"))
}

/// Checks VISA's time format, `2026-12-04T15:10:04.123Z`.
pub fn assert_visa_time(text: &str) {
    let parsed = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.3fZ");
    assert!(
        parsed.is_ok() && text.len() == 24,
        "not a VISA time: {text}"
    );
}

/// Checks an instance's times and returns its state.
pub fn check_instance(instance: &Instance) -> State {
    assert_visa_time(&instance.created_at);
    if let Some(fault) = &instance.fault {
        assert_visa_time(&fault.created);
    }
    instance.state
}
