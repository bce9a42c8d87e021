//! Quota, devices and cluster capacity: `/api/metrics`, `/api/devices`,
//! `/api/device_allocations`, `/api/custom_resource_classes` and the `/api/hypervisor_*` views,
//! all computed from the catalogue, the records and the node and pod watches.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{Path, State};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde::Serialize;
use serde_json::{Value, json};

use visa_jobs::catalogue::{Catalogue, Device, Flavour};
use visa_jobs::model::{DesiredState, InstanceRecord};
use visa_jobs::quantity::{parse_milli, parse_units};

use crate::app::AppState;
use crate::error::ApiError;

const MIB: i64 = 1024 * 1024;
const GIB: i64 = 1024 * MIB;

/// Quota maxima set by the operators; each one left unset comes from the namespace's
/// ResourceQuota, and failing that from the nodes' allocatable capacity.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuotaSettings {
    pub max_instances: Option<i64>,
    pub max_cores: Option<i64>,
    pub max_ram_mib: Option<i64>,
}

/// `Limits` in VISA's shape: maxima and usage, RAM in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub max_total_ram_size: i64,
    pub total_ram_used: i64,
    pub max_total_instances: i64,
    pub total_instances_used: i64,
    pub max_total_cores: i64,
    pub total_cores_used: i64,
}

/// Computes maxima and usage. Every live instance counts as an instance; only instances meant
/// to run hold cores and memory.
pub fn limits(state: &AppState) -> Limits {
    let records = state.view.live_records();
    let live = records
        .iter()
        .filter(|record| record.desired != DesiredState::Deleted)
        .collect::<Vec<_>>();
    let running = live
        .iter()
        .filter(|record| record.desired == DesiredState::Running)
        .filter_map(|record| state.catalogue.flavour(&record.flavour_id))
        .collect::<Vec<_>>();

    let (quota_instances, quota_cores, quota_ram) = resource_quota(state);
    let (node_cores, node_ram, node_pods) = node_capacity(&state.view.nodes());
    let settings = state.quota;
    Limits {
        max_total_ram_size: settings.max_ram_mib.or(quota_ram).unwrap_or(node_ram),
        total_ram_used: running.iter().map(|flavour| flavour.ram).sum(),
        max_total_instances: settings
            .max_instances
            .or(quota_instances)
            .unwrap_or(node_pods),
        total_instances_used: live.len() as i64,
        max_total_cores: settings.max_cores.or(quota_cores).unwrap_or(node_cores),
        total_cores_used: running.iter().map(|flavour| flavour.cpus).sum(),
    }
}

/// Rejects a new instance of `flavour` that would pass a maximum, naming the limit.
pub fn check_quota(state: &AppState, flavour: &Flavour) -> Result<(), ApiError> {
    let limits = limits(state);
    let checks = [
        (
            "maxTotalInstances",
            limits.total_instances_used,
            1,
            limits.max_total_instances,
        ),
        (
            "maxTotalCores",
            limits.total_cores_used,
            flavour.cpus,
            limits.max_total_cores,
        ),
        (
            "maxTotalRamSize",
            limits.total_ram_used,
            flavour.ram,
            limits.max_total_ram_size,
        ),
    ];
    for (limit, used, needed, maximum) in checks {
        if used + needed > maximum {
            return Err(ApiError::Forbidden(format!(
                "quota exceeded: {limit} is {maximum}, {used} in use, and flavour {:?} needs {needed}; \
                 delete instances or raise the limit",
                flavour.id
            )));
        }
    }
    Ok(())
}

/// Reads instance, CPU and memory maxima from the namespace's ResourceQuotas, the smallest of
/// each when several set it.
fn resource_quota(state: &AppState) -> (Option<i64>, Option<i64>, Option<i64>) {
    let mut instances: Option<i64> = None;
    let mut cores: Option<i64> = None;
    let mut ram: Option<i64> = None;
    let keep_smallest = |slot: &mut Option<i64>, value: Option<i64>| {
        if let Some(value) = value {
            *slot = Some(slot.map_or(value, |current| current.min(value)));
        }
    };
    for quota in state.view.quotas() {
        let Some(hard) = quota.spec.as_ref().and_then(|spec| spec.hard.as_ref()) else {
            continue;
        };
        let read = |keys: &[&str]| {
            keys.iter()
                .find_map(|key| hard.get(*key))
                .map(|quantity| quantity.0.clone())
        };
        keep_smallest(
            &mut instances,
            read(&["count/statefulsets.apps", "pods"]).and_then(|text| parse_units(&text)),
        );
        keep_smallest(
            &mut cores,
            read(&["limits.cpu", "requests.cpu", "cpu"]).and_then(|text| parse_units(&text)),
        );
        keep_smallest(
            &mut ram,
            read(&["limits.memory", "requests.memory", "memory"])
                .and_then(|text| parse_units(&text).map(|bytes| bytes / MIB)),
        );
    }
    (instances, cores, ram)
}

/// Sums the nodes' allocatable cores, memory in MiB and pods.
fn node_capacity(nodes: &[std::sync::Arc<Node>]) -> (i64, i64, i64) {
    let mut totals = (0, 0, 0);
    for node in nodes {
        let allocatable = allocatable(node);
        totals.0 += allocatable.get("cpu").copied().unwrap_or(0) / 1000;
        totals.1 += allocatable.get("memory").copied().unwrap_or(0) / 1000 / MIB;
        totals.2 += allocatable.get("pods").copied().unwrap_or(0) / 1000;
    }
    totals
}

/// Returns a node's allocatable resources in thousandths of their unit.
fn allocatable(node: &Node) -> BTreeMap<String, i64> {
    node.status
        .as_ref()
        .and_then(|status| status.allocatable.as_ref())
        .map(|resources| {
            resources
                .iter()
                .filter_map(|(name, quantity)| {
                    parse_milli(&quantity.0).map(|value| (name.clone(), value))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub async fn metrics(State(state): State<AppState>) -> Json<Limits> {
    Json(limits(&state))
}

fn device_json(device: &Device) -> Value {
    json!({ "identifier": device.resource, "type": device.device_type.as_str() })
}

fn device_allocations(catalogue: &Catalogue, flavour: &Flavour) -> Vec<Value> {
    flavour
        .devices
        .iter()
        .filter_map(|wanted| {
            let device = catalogue.device(&wanted.resource)?;
            Some(json!({ "flavourId": flavour.id, "device": device_json(device), "unitCount": wanted.count }))
        })
        .collect()
}

/// Returns 404 when the catalogue defines no devices, which VISA reads as "not available".
fn require_devices(catalogue: &Catalogue) -> Result<(), ApiError> {
    if catalogue.devices.is_empty() {
        Err(ApiError::NotFound(
            "no devices are configured in the catalogue".to_owned(),
        ))
    } else {
        Ok(())
    }
}

pub async fn devices(State(state): State<AppState>) -> Result<Json<Vec<Value>>, ApiError> {
    require_devices(&state.catalogue)?;
    Ok(Json(
        state.catalogue.devices.iter().map(device_json).collect(),
    ))
}

pub async fn device(
    State(state): State<AppState>,
    Path((device_type, identifier)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    state
        .catalogue
        .device(&identifier)
        .filter(|device| device.device_type.as_str() == device_type)
        .map(|device| Json(device_json(device)))
        .ok_or_else(|| ApiError::NotFound(format!("device {device_type}/{identifier} not found")))
}

pub async fn all_device_allocations(
    State(state): State<AppState>,
) -> Result<Json<Vec<Value>>, ApiError> {
    require_devices(&state.catalogue)?;
    let catalogue = state.catalogue.as_ref();
    Ok(Json(
        catalogue
            .flavours
            .iter()
            .flat_map(|flavour| device_allocations(catalogue, flavour))
            .collect(),
    ))
}

pub async fn flavour_device_allocations(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let catalogue = state.catalogue.as_ref();
    let flavour = catalogue
        .flavour(&id)
        .ok_or_else(|| ApiError::NotFound(format!("flavour {id:?} not found")))?;
    Ok(Json(device_allocations(catalogue, flavour)))
}

/// Resources that the standard inventory keys already cover.
fn is_standard_resource(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage" | "pods")
        || name.starts_with("hugepages-")
}

pub async fn custom_resource_classes(State(state): State<AppState>) -> Json<Vec<String>> {
    let classes: BTreeSet<String> = state
        .view
        .nodes()
        .iter()
        .flat_map(|node| allocatable(node).into_keys())
        .filter(|name| !is_standard_resource(name))
        .collect();
    Json(classes.into_iter().collect())
}

fn hypervisor(node: &Node) -> Value {
    let name = node.metadata.name.clone().unwrap_or_default();
    let conditions = node
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref());
    let ready = conditions.is_some_and(|conditions| {
        conditions
            .iter()
            .any(|condition| condition.type_ == "Ready" && condition.status == "True")
    });
    let schedulable = !node
        .spec
        .as_ref()
        .and_then(|spec| spec.unschedulable)
        .unwrap_or(false);
    json!({
        "id": name,
        "hostname": name,
        "state": if ready { "up" } else { "down" },
        "status": if schedulable { "enabled" } else { "disabled" },
    })
}

/// Converts resources in thousandths of their unit to VISA's inventory classes.
fn inventory(resources: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    let mut classes = BTreeMap::new();
    for (name, milli) in resources {
        match name.as_str() {
            "cpu" => classes.insert("VCPU".to_owned(), milli / 1000),
            "memory" => classes.insert("MEMORY_MB".to_owned(), milli / 1000 / MIB),
            "ephemeral-storage" => classes.insert("DISK_GB".to_owned(), milli / 1000 / GIB),
            other if !is_standard_resource(other) => classes.insert(other.to_owned(), milli / 1000),
            _ => None,
        };
    }
    classes
}

pub async fn hypervisor_inventories(State(state): State<AppState>) -> Json<Vec<Value>> {
    let nodes = state.view.nodes();
    Json(
        nodes
            .iter()
            .map(|node| json!({ "hypervisor": hypervisor(node), "inventory": inventory(&allocatable(node)) }))
            .collect(),
    )
}

/// Groups the instance pods that are bound to a node by node name.
fn pods_by_node(state: &AppState) -> BTreeMap<String, Vec<std::sync::Arc<Pod>>> {
    let mut by_node: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for pod in state.view.pods() {
        let node = pod.spec.as_ref().and_then(|spec| spec.node_name.clone());
        if let Some(node) = node {
            by_node.entry(node).or_default().push(pod);
        }
    }
    by_node
}

fn instance_id(pod: &Pod) -> Option<String> {
    pod.metadata
        .labels
        .as_ref()?
        .get(visa_jobs::objects::LABEL_INSTANCE_ID)
        .cloned()
}

pub async fn hypervisor_usages(State(state): State<AppState>) -> Json<Vec<Value>> {
    let by_node = pods_by_node(&state);
    let records: BTreeMap<String, InstanceRecord> = state
        .view
        .live_records()
        .into_iter()
        .map(|record| (record.id.clone(), record))
        .collect();
    let usages = state
        .view
        .nodes()
        .iter()
        .map(|node| {
            let name = node.metadata.name.clone().unwrap_or_default();
            let mut requested: BTreeMap<String, i64> = BTreeMap::new();
            let mut disk_gib = 0;
            for pod in by_node.get(&name).into_iter().flatten() {
                for container in pod.spec.iter().flat_map(|spec| spec.containers.iter()) {
                    let requests = container
                        .resources
                        .as_ref()
                        .and_then(|resources| resources.requests.as_ref());
                    for (resource, quantity) in requests.into_iter().flatten() {
                        *requested.entry(resource.clone()).or_default() +=
                            parse_milli(&quantity.0).unwrap_or(0);
                    }
                }
                let flavour = instance_id(pod)
                    .and_then(|id| records.get(&id))
                    .and_then(|record| state.catalogue.flavour(&record.flavour_id));
                disk_gib += flavour.map_or(0, |flavour| flavour.disk);
            }
            let mut usage = inventory(&requested);
            usage.entry("VCPU".to_owned()).or_insert(0);
            usage.entry("MEMORY_MB".to_owned()).or_insert(0);
            usage.insert("DISK_GB".to_owned(), disk_gib);
            json!({ "hypervisor": hypervisor(node), "usage": usage })
        })
        .collect();
    Json(usages)
}

pub async fn hypervisor_allocations(State(state): State<AppState>) -> Json<Vec<Value>> {
    let by_node = pods_by_node(&state);
    let allocations = state
        .view
        .nodes()
        .iter()
        .map(|node| {
            let name = node.metadata.name.clone().unwrap_or_default();
            let mut ids: Vec<String> = by_node
                .get(&name)
                .into_iter()
                .flatten()
                .filter_map(|pod| instance_id(pod))
                .collect();
            ids.sort();
            let entries: Vec<Value> = ids
                .into_iter()
                .map(|id| json!({ "serverComputeId": id }))
                .collect();
            json!({ "hypervisor": hypervisor(node), "allocations": entries })
        })
        .collect();
    Json(allocations)
}
