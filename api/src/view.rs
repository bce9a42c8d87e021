//! The in-memory view that serves VISA's reads: instance records from the database, refreshed
//! in the background, joined with StatefulSets and pods kept current by Kubernetes watches.
//! A read never waits on the database or the cluster, so an instance that exists is answered
//! with its last known state even while either is unreachable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod, ResourceQuota};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tracing::{info, warn};

use visa_jobs::model::{Instance, InstanceRecord, Millis, format_visa_time, now_millis};
use visa_jobs::objects;
use visa_jobs::state::{self, Observed};
use visa_jobs::store::Database;

pub struct View {
    records: RwLock<HashMap<String, InstanceRecord>>,
    stateful_sets: Store<StatefulSet>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    quotas: Store<ResourceQuota>,
    namespace: String,
    start_grace: Duration,
    first_ready: mpsc::UnboundedSender<(String, Millis)>,
    records_loaded: AtomicBool,
    /// Times a watch stream reported an error and restarted.
    pub watch_restarts: AtomicU64,
}

impl View {
    /// Starts the watches and the database refresh, and returns the view at once. `ready` turns
    /// true once both watches have listed and the records have loaded.
    pub fn start(
        client: Client,
        database: Database,
        namespace: &str,
        start_grace: Duration,
        refresh_interval: Duration,
    ) -> Arc<Self> {
        let selector = objects::managed_selector();
        let config = watcher::Config::default().labels(&selector);

        let (stateful_sets, set_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        let (nodes, node_writer) = reflector::store();
        let (quotas, quota_writer) = reflector::store();
        let (first_ready, first_ready_receiver) = mpsc::unbounded_channel();

        let view = Arc::new(Self {
            records: RwLock::new(HashMap::new()),
            stateful_sets,
            pods,
            nodes,
            quotas,
            namespace: namespace.to_owned(),
            start_grace,
            first_ready,
            records_loaded: AtomicBool::new(false),
            watch_restarts: AtomicU64::new(0),
        });

        let set_api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
        let pod_api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let node_api: Api<Node> = Api::all(client.clone());
        let quota_api: Api<ResourceQuota> = Api::namespaced(client, namespace);
        let everything = watcher::Config::default();
        let set_stream = watcher(set_api, config.clone())
            .default_backoff()
            .reflect(set_writer);
        let pod_stream = watcher(pod_api, config)
            .default_backoff()
            .reflect(pod_writer);
        let node_stream = watcher(node_api, everything.clone())
            .default_backoff()
            .reflect(node_writer);
        let quota_stream = watcher(quota_api, everything)
            .default_backoff()
            .reflect(quota_writer);
        tokio::spawn(drain_watch(
            Arc::clone(&view),
            "StatefulSet",
            set_stream.boxed(),
        ));
        tokio::spawn(drain_watch(Arc::clone(&view), "Pod", pod_stream.boxed()));
        tokio::spawn(drain_watch(Arc::clone(&view), "Node", node_stream.boxed()));
        tokio::spawn(drain_watch(
            Arc::clone(&view),
            "ResourceQuota",
            quota_stream.boxed(),
        ));

        tokio::spawn(refresh_records(
            Arc::clone(&view),
            database.clone(),
            refresh_interval,
        ));
        tokio::spawn(record_first_ready(database, first_ready_receiver));
        view
    }

    /// Returns whether the watches have listed once and the records have loaded, so that the
    /// view is complete.
    pub fn ready(&self) -> bool {
        self.records_loaded.load(Ordering::Acquire)
            && futures::FutureExt::now_or_never(self.stateful_sets.wait_until_ready()).is_some()
            && futures::FutureExt::now_or_never(self.pods.wait_until_ready()).is_some()
            && futures::FutureExt::now_or_never(self.nodes.wait_until_ready()).is_some()
            && futures::FutureExt::now_or_never(self.quotas.wait_until_ready()).is_some()
    }

    /// Returns every node, sorted by name.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        let mut nodes = self.nodes.state();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        nodes
    }

    pub fn node_exists(&self, name: &str) -> bool {
        self.nodes.get(&ObjectRef::new(name)).is_some()
    }

    /// Returns the ResourceQuotas of the instances' namespace.
    pub fn quotas(&self) -> Vec<Arc<ResourceQuota>> {
        self.quotas.state()
    }

    /// Returns every instance pod.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.pods.state()
    }

    /// Stores a record written by this process, so the next read finds it without a refresh.
    pub fn put(&self, record: InstanceRecord) {
        let mut records = self.records.write().expect("view lock poisoned");
        merge(&mut records, record);
    }

    pub fn record(&self, id: &str) -> Option<InstanceRecord> {
        self.records
            .read()
            .expect("view lock poisoned")
            .get(id)
            .cloned()
    }

    /// Returns the live instance whose VISA name is `name`, if any.
    pub fn live_by_name(&self, name: &str) -> Option<InstanceRecord> {
        self.records
            .read()
            .expect("view lock poisoned")
            .values()
            .find(|record| record.name == name && record.deleted_at.is_none())
            .cloned()
    }

    /// Returns the instance in VISA's shape, or `None` when its deletion has finished.
    pub fn instance(&self, record: &InstanceRecord) -> Option<Instance> {
        let observed = self.observe(record);
        let state = observed.state?;
        Some(Instance {
            id: record.id.clone(),
            name: record.name.clone(),
            state,
            address: observed.address,
            image_id: record.image_id.clone(),
            flavour_id: record.flavour_id.clone(),
            created_at: format_visa_time(record.created_at),
            fault: observed.fault,
            security_groups: record.security_groups.clone(),
            metadata: record.metadata.clone(),
            boot_command: record.boot_command.clone(),
        })
    }

    /// Returns every instance whose deletion has not finished, oldest first.
    pub fn instances(&self) -> Vec<Instance> {
        self.live_records()
            .iter()
            .filter_map(|record| self.instance(record))
            .collect()
    }

    /// Returns the records of every instance whose deletion has not finished, oldest first.
    pub fn live_records(&self) -> Vec<InstanceRecord> {
        let mut records: Vec<InstanceRecord> = self
            .records
            .read()
            .expect("view lock poisoned")
            .values()
            .filter(|record| record.deleted_at.is_none())
            .cloned()
            .collect();
        records.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        records
    }

    /// Returns the node that the instance's pod is scheduled on, from the pod watch.
    pub fn node_of(&self, id: &str) -> Option<String> {
        self.pod(id)?.spec.as_ref()?.node_name.clone()
    }

    pub fn pod(&self, id: &str) -> Option<Arc<Pod>> {
        self.pods
            .get(&ObjectRef::new(&objects::pod_name(id)).within(&self.namespace))
    }

    fn observe(&self, record: &InstanceRecord) -> Observed {
        let set = self
            .stateful_sets
            .get(&ObjectRef::new(&record.id).within(&self.namespace));
        let pod = self.pod(&record.id);
        let now = now_millis();
        let observed = state::observe(
            record,
            set.as_deref(),
            pod.as_deref(),
            now,
            self.start_grace,
        );

        if observed.ready && record.first_ready_at.is_none() {
            // Each API replica counts the instances that it is first to observe as ready, so a
            // sum over replicas can count an instance more than once.
            let seconds = (now - record.created_at).max(0) as f64 / 1000.0;
            metrics::histogram!(visa_jobs::prometheus::CREATE_TO_READY).record(seconds);
            let mut first = record.clone();
            first.first_ready_at = Some(now);
            first.updated_at = now;
            self.put(first);
            // The writer task runs for the life of the process, so a send fails only at shutdown.
            let _ = self.first_ready.send((record.id.clone(), now));
        }
        observed
    }
}

/// Keeps the newer of two versions of a record.
fn merge(records: &mut HashMap<String, InstanceRecord>, record: InstanceRecord) {
    match records.get(&record.id) {
        Some(current) if current.updated_at > record.updated_at => {}
        _ => {
            records.insert(record.id.clone(), record);
        }
    }
}

async fn drain_watch<S, K>(view: Arc<View>, kind: &'static str, mut stream: S)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin,
{
    while let Some(event) = stream.next().await {
        if let Err(error) = event {
            let restarts = view.watch_restarts.fetch_add(1, Ordering::Relaxed) + 1;
            if restarts == 1 || restarts.is_multiple_of(20) {
                warn!(kind, %error, restarts, "watch failed; retrying with backoff");
            }
        }
    }
    warn!(kind, "watch stream ended");
}

/// Loads every record once, then the ones changed since the last load, every `interval`.
async fn refresh_records(view: Arc<View>, database: Database, interval: Duration) {
    // Rows written in the same millisecond as the last load may commit after it, so each
    // refresh reads a little further back than the newest change it has seen.
    const OVERLAP_MILLIS: Millis = 5_000;
    let mut newest: Millis = 0;
    let mut failures: u64 = 0;
    loop {
        let since = if newest == 0 {
            0
        } else {
            newest - OVERLAP_MILLIS
        };
        match database.instances_changed_since(since).await {
            Ok(changed) => {
                if failures > 0 {
                    info!(failures, "database reachable again");
                }
                failures = 0;
                let mut records = view.records.write().expect("view lock poisoned");
                for record in changed {
                    newest = newest.max(record.updated_at);
                    merge(&mut records, record);
                }
                drop(records);
                if !view.records_loaded.swap(true, Ordering::AcqRel) {
                    info!("instance records loaded");
                }
            }
            Err(error) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(30) {
                    warn!(%error, failures, "failed to refresh instance records; serving the last known ones");
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

async fn record_first_ready(
    database: Database,
    mut receiver: mpsc::UnboundedReceiver<(String, Millis)>,
) {
    while let Some((id, at)) = receiver.recv().await {
        if let Err(error) = database.mark_first_ready(&id, at).await {
            warn!(instance = %id, %error, "failed to record that the instance became ready; the next read records it again");
        } else {
            info!(instance = %id, "instance ready for the first time");
        }
    }
}
