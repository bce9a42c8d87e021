//! VISA's state of an instance, read from its record and its live StatefulSet and pod.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;

use crate::model::{
    Action, DesiredState, Fault, InstanceRecord, InstanceState, Millis, format_visa_time,
};
use crate::objects::ANNOTATION_LAST_ACTION_AT;

/// Container waiting reasons that are steps of a normal start, not faults.
const BENIGN_WAITING_REASONS: [&str; 3] = ["ContainerCreating", "PodInitializing", "Terminating"];

/// `code` of the faults this provider reports; VISA shows it but takes no decision on it.
pub const FAULT_CODE: i64 = -1;

/// State, address and fault of an instance, as VISA receives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// `None` when the instance's deletion has finished and the API returns 404.
    pub state: Option<InstanceState>,
    pub address: Option<String>,
    pub fault: Option<Fault>,
    /// True when the pod of the latest revision is ready: the instance has been ACTIVE.
    pub ready: bool,
}

/// Computes VISA's state. `start_grace` is how long a running instance may stay not ready after
/// its last action before it is an ERROR with the scheduler's or the kubelet's reason.
pub fn observe(
    record: &InstanceRecord,
    stateful_set: Option<&StatefulSet>,
    pod: Option<&Pod>,
    now: Millis,
    start_grace: Duration,
) -> Observed {
    let mut observed = Observed {
        state: Some(InstanceState::Unknown),
        address: None,
        fault: None,
        ready: false,
    };

    if record.deleted_at.is_some() {
        observed.state = None;
        return observed;
    }
    if record.desired == DesiredState::Deleted {
        observed.state = Some(InstanceState::Deleted);
        return observed;
    }
    if let Some(fault) = &record.fault {
        observed.state = Some(InstanceState::Error);
        observed.fault = Some(Fault {
            message: fault.message.clone(),
            code: FAULT_CODE,
            details: fault.details.clone(),
            created: format_visa_time(fault.at),
        });
        return observed;
    }

    let pod = pod.filter(|pod| {
        pod.metadata.deletion_timestamp.is_none() || record.desired == DesiredState::Stopped
    });
    if let Some(fault) = pod.and_then(|pod| container_fault(pod, now)) {
        observed.state = Some(InstanceState::Error);
        observed.fault = Some(fault);
        return observed;
    }

    let Some(stateful_set) = stateful_set else {
        observed.state = Some(pending_state(record));
        return observed;
    };

    // Until the StatefulSet carries this action's stamp and its controller has seen that
    // generation, the visible pod may be the old one, so the state is the action's own.
    let applied = stamped_action_at(stateful_set) == Some(format_visa_time(record.action_at))
        && generation_observed(stateful_set);
    if !applied {
        observed.state = Some(pending_state(record));
        return observed;
    }

    match record.desired {
        DesiredState::Stopped => {
            observed.state = Some(if pod.is_some() {
                InstanceState::Stopping
            } else {
                InstanceState::Stopped
            });
        }
        DesiredState::Running => {
            if let Some(pod) = pod.filter(|pod| pod_is_current_and_ready(stateful_set, pod)) {
                observed.state = Some(InstanceState::Active);
                observed.address = pod.status.as_ref().and_then(|status| status.pod_ip.clone());
                observed.ready = true;
                return observed;
            }

            let waited = Duration::from_millis((now - record.action_at).max(0) as u64);
            if waited > start_grace {
                observed.state = Some(InstanceState::Error);
                observed.fault = Some(not_ready_fault(pod, waited, now));
                return observed;
            }
            observed.state = Some(pending_state(record));
        }
        DesiredState::Deleted => unreachable!("handled above"),
    }
    observed
}

/// Returns the state of a running or stopped instance whose last action is still under way.
fn pending_state(record: &InstanceRecord) -> InstanceState {
    match record.desired {
        DesiredState::Stopped => InstanceState::Stopping,
        DesiredState::Deleted => InstanceState::Deleted,
        DesiredState::Running if record.first_ready_at.is_none() => InstanceState::Building,
        DesiredState::Running if record.action == Action::Reboot => InstanceState::Rebooting,
        DesiredState::Running if record.action == Action::Migrate => InstanceState::Migrating,
        DesiredState::Running => InstanceState::Starting,
    }
}

fn stamped_action_at(stateful_set: &StatefulSet) -> Option<String> {
    stateful_set
        .spec
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(ANNOTATION_LAST_ACTION_AT)
        .cloned()
}

fn generation_observed(stateful_set: &StatefulSet) -> bool {
    let generation = stateful_set.metadata.generation.unwrap_or(0);
    let observed = stateful_set
        .status
        .as_ref()
        .and_then(|status| status.observed_generation)
        .unwrap_or(0);
    observed >= generation
}

/// Returns whether the pod belongs to the StatefulSet's latest revision and is ready, so that
/// the old pod of a reboot, still ready for a moment, never reads as ACTIVE.
fn pod_is_current_and_ready(stateful_set: &StatefulSet, pod: &Pod) -> bool {
    let Some(status) = stateful_set.status.as_ref() else {
        return false;
    };
    let Some(update_revision) = status.update_revision.as_deref() else {
        return false;
    };
    let pod_revision = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get("controller-revision-hash"))
        .map(String::as_str);
    if pod_revision != Some(update_revision) || pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    pod_ready(pod)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|condition| condition.type_ == "Ready" && condition.status == "True")
        })
}

/// Returns the fault of the first container that waits for a reason other than a normal start.
fn container_fault(pod: &Pod, now: Millis) -> Option<Fault> {
    let status = pod.status.as_ref()?;
    let statuses = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for container in statuses {
        let Some(waiting) = container
            .state
            .as_ref()
            .and_then(|state| state.waiting.as_ref())
        else {
            continue;
        };
        let reason = waiting.reason.clone().unwrap_or_default();
        if reason.is_empty() || BENIGN_WAITING_REASONS.contains(&reason.as_str()) {
            continue;
        }
        return Some(Fault {
            message: waiting.message.clone().unwrap_or_else(|| reason.clone()),
            code: FAULT_CODE,
            details: reason,
            created: format_visa_time(now),
        });
    }
    None
}

/// Explains why a pod is not ready after the grace period, from its conditions.
fn not_ready_fault(pod: Option<&Pod>, waited: Duration, now: Millis) -> Fault {
    let condition = pod
        .and_then(|pod| pod.status.as_ref())
        .and_then(|status| status.conditions.as_ref())
        .and_then(|conditions| {
            conditions
                .iter()
                .filter(|condition| condition.status != "True")
                .find(|condition| condition.type_ == "PodScheduled")
                .or_else(|| {
                    conditions
                        .iter()
                        .find(|condition| condition.status != "True")
                })
                .cloned()
        });

    let (details, reason) = match condition {
        Some(condition) => (
            condition
                .reason
                .clone()
                .unwrap_or_else(|| format!("{}False", condition.type_)),
            condition.message.clone().unwrap_or_default(),
        ),
        None if pod.is_none() => ("PodMissing".to_owned(), "no pod was created".to_owned()),
        None => ("NotReady".to_owned(), String::new()),
    };
    let mut message = format!("instance not ready after {} s", waited.as_secs());
    if !reason.is_empty() {
        message.push_str(": ");
        message.push_str(&reason);
    }
    Fault {
        message,
        code: FAULT_CODE,
        details,
        created: format_visa_time(now),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
        PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;
    use crate::model::RecordedFault;

    const NOW: Millis = 1_796_396_300_000;
    const GRACE: Duration = Duration::from_secs(600);

    fn record(desired: DesiredState, action: Action) -> InstanceRecord {
        InstanceRecord {
            id: "visa-instance-1".to_owned(),
            name: "VISA-INSTANCE-1".to_owned(),
            image_id: "desktop".to_owned(),
            flavour_id: "small".to_owned(),
            security_groups: Vec::new(),
            metadata: BTreeMap::new(),
            boot_command: None,
            node: None,
            desired,
            action,
            action_at: NOW - 5_000,
            action_seq: 1,
            applied_seq: 0,
            created_at: NOW - 60_000,
            first_ready_at: Some(NOW - 50_000),
            deleted_at: None,
            fault: None,
            updated_at: NOW - 5_000,
        }
    }

    fn stateful_set(
        record: &InstanceRecord,
        generation: i64,
        observed: i64,
        revision: &str,
    ) -> StatefulSet {
        let annotations = BTreeMap::from([(
            ANNOTATION_LAST_ACTION_AT.to_owned(),
            format_visa_time(record.action_at),
        )]);
        StatefulSet {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec: StatefulSetSpec {
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        annotations: Some(annotations),
                        ..ObjectMeta::default()
                    }),
                    spec: None,
                },
                ..StatefulSetSpec::default()
            },
            status: Some(StatefulSetStatus {
                observed_generation: Some(observed),
                update_revision: Some(revision.to_owned()),
                ..StatefulSetStatus::default()
            }),
        }
    }

    fn pod(revision: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(
                    "controller-revision-hash".to_owned(),
                    revision.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                pod_ip: Some("10.0.0.7".to_owned()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".to_owned(),
                    status: if ready { "True" } else { "False" }.to_owned(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn state(observed: &Observed) -> InstanceState {
        observed.state.expect("instance should not be gone")
    }

    #[test]
    fn ready_current_pod_is_active_with_address() {
        let record = record(DesiredState::Running, Action::Start);
        let set = stateful_set(&record, 2, 2, "r2");
        let observed = observe(&record, Some(&set), Some(&pod("r2", true)), NOW, GRACE);
        assert_eq!(state(&observed), InstanceState::Active);
        assert_eq!(observed.address.as_deref(), Some("10.0.0.7"));
        assert!(observed.ready);
    }

    #[test]
    fn new_instance_is_building() {
        let mut record = record(DesiredState::Running, Action::Create);
        record.first_ready_at = None;
        assert_eq!(
            state(&observe(&record, None, None, NOW, GRACE)),
            InstanceState::Building
        );

        let set = stateful_set(&record, 1, 1, "r1");
        let observed = observe(&record, Some(&set), Some(&pod("r1", false)), NOW, GRACE);
        assert_eq!(state(&observed), InstanceState::Building);
        assert_eq!(observed.address, None);
    }

    #[test]
    fn reboot_with_old_ready_pod_is_rebooting() {
        let record = record(DesiredState::Running, Action::Reboot);
        let set = stateful_set(&record, 3, 3, "r3");
        let observed = observe(&record, Some(&set), Some(&pod("r2", true)), NOW, GRACE);
        assert_eq!(state(&observed), InstanceState::Rebooting);
    }

    #[test]
    fn reboot_not_yet_observed_is_rebooting() {
        let record = record(DesiredState::Running, Action::Reboot);
        let set = stateful_set(&record, 3, 2, "r2");
        let observed = observe(&record, Some(&set), Some(&pod("r2", true)), NOW, GRACE);
        assert_eq!(state(&observed), InstanceState::Rebooting);
    }

    #[test]
    fn reboot_not_yet_applied_is_rebooting() {
        let record = record(DesiredState::Running, Action::Reboot);
        let mut set = stateful_set(&record, 2, 2, "r2");
        let template = set.spec.template.metadata.as_mut().unwrap();
        template.annotations = Some(BTreeMap::new());
        let observed = observe(&record, Some(&set), Some(&pod("r2", true)), NOW, GRACE);
        assert_eq!(state(&observed), InstanceState::Rebooting);
    }

    #[test]
    fn migration_with_old_pod_is_migrating() {
        let record = record(DesiredState::Running, Action::Migrate);
        let set = stateful_set(&record, 4, 4, "r4");
        let observed = observe(&record, Some(&set), Some(&pod("r3", true)), NOW, GRACE);
        assert_eq!(state(&observed), InstanceState::Migrating);
    }

    #[test]
    fn stop_with_pod_is_stopping_then_stopped() {
        let record = record(DesiredState::Stopped, Action::Stop);
        let set = stateful_set(&record, 2, 2, "r2");
        let with_pod = observe(&record, Some(&set), Some(&pod("r1", true)), NOW, GRACE);
        assert_eq!(state(&with_pod), InstanceState::Stopping);
        let without_pod = observe(&record, Some(&set), None, NOW, GRACE);
        assert_eq!(state(&without_pod), InstanceState::Stopped);
    }

    #[test]
    fn start_without_ready_pod_is_starting() {
        let record = record(DesiredState::Running, Action::Start);
        let set = stateful_set(&record, 2, 2, "r2");
        let observed = observe(&record, Some(&set), None, NOW, GRACE);
        assert_eq!(state(&observed), InstanceState::Starting);
    }

    #[test]
    fn delete_requested_is_deleted_then_gone() {
        let mut record = record(DesiredState::Deleted, Action::Delete);
        assert_eq!(
            state(&observe(&record, None, None, NOW, GRACE)),
            InstanceState::Deleted
        );
        record.deleted_at = Some(NOW);
        assert_eq!(observe(&record, None, None, NOW, GRACE).state, None);
    }

    #[test]
    fn image_pull_back_off_is_error() {
        let record = record(DesiredState::Running, Action::Start);
        let set = stateful_set(&record, 2, 2, "r2");
        let mut failing = pod("r2", false);
        failing.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
            name: "visa-instance-container".to_owned(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ImagePullBackOff".to_owned()),
                    message: Some("Back-off pulling image".to_owned()),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]);
        let observed = observe(&record, Some(&set), Some(&failing), NOW, GRACE);
        assert_eq!(state(&observed), InstanceState::Error);
        let fault = observed.fault.unwrap();
        assert_eq!(fault.details, "ImagePullBackOff");
        assert_eq!(fault.message, "Back-off pulling image");
    }

    #[test]
    fn container_creating_is_not_a_fault() {
        let record = record(DesiredState::Running, Action::Start);
        let set = stateful_set(&record, 2, 2, "r2");
        let mut creating = pod("r2", false);
        creating.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ContainerCreating".to_owned()),
                    message: None,
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]);
        let observed = observe(&record, Some(&set), Some(&creating), NOW, GRACE);
        assert_eq!(state(&observed), InstanceState::Starting);
    }

    #[test]
    fn unschedulable_after_grace_is_error() {
        let mut record = record(DesiredState::Running, Action::Start);
        record.action_at = NOW - 700_000;
        let set = stateful_set(&record, 2, 2, "r2");
        let mut pending = pod("r2", false);
        pending.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "PodScheduled".to_owned(),
            status: "False".to_owned(),
            reason: Some("Unschedulable".to_owned()),
            message: Some("0/2 nodes are available: 2 Insufficient cpu.".to_owned()),
            ..PodCondition::default()
        }]);
        let observed = observe(&record, Some(&set), Some(&pending), NOW, GRACE);
        assert_eq!(state(&observed), InstanceState::Error);
        let fault = observed.fault.unwrap();
        assert_eq!(fault.details, "Unschedulable");
        assert!(
            fault.message.contains("Insufficient cpu"),
            "{}",
            fault.message
        );
    }

    #[test]
    fn recorded_fault_is_error() {
        let mut record = record(DesiredState::Running, Action::Create);
        record.fault = Some(RecordedFault {
            message: "StatefulSet rejected".to_owned(),
            details: "Invalid".to_owned(),
            at: NOW,
        });
        let observed = observe(&record, None, None, NOW, GRACE);
        assert_eq!(state(&observed), InstanceState::Error);
        assert_eq!(observed.fault.unwrap().created, format_visa_time(NOW));
    }

    #[test]
    fn terminating_pod_of_running_instance_is_ignored() {
        let record = record(DesiredState::Running, Action::Reboot);
        let set = stateful_set(&record, 3, 3, "r3");
        let mut old = pod("r3", true);
        old.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let observed = observe(&record, Some(&set), Some(&old), NOW, GRACE);
        assert_eq!(state(&observed), InstanceState::Rebooting);
    }
}
