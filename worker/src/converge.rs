//! The instance job: converge one instance's Kubernetes objects to its recorded intent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use tracing::{info, warn};

use visa_jobs::catalogue::{Image, SecurityGroup};
use visa_jobs::investigations::{NfsSettings, data_mounts, proposals_from_metadata};
use visa_jobs::model::{DesiredState, InstanceRecord, format_visa_time, now_millis};
use visa_jobs::objects::{self, DataMounts, FIELD_MANAGER, ObjectSettings, Provisioning};
use visa_jobs::queue::ConvergeInstance;
use visa_jobs::store::{Database, JobStatus};

/// Everything a job needs, shared by all jobs of one worker process.
pub struct Converger {
    pub database: Database,
    pub client: Client,
    pub settings: ObjectSettings,
    /// Settings of the NFS mounts of investigation data. `None` mounts no data.
    pub nfs: Option<NfsSettings>,
    pub worker_name: String,
    /// How long a worker's hold on an instance lasts without renewal.
    pub lease_ttl: Duration,
    /// Maximum time a job retries transient failures before it records a fault.
    pub retry_budget: Duration,
}

/// Failure of one pass of convergence.
#[derive(Debug, thiserror::Error)]
pub enum ConvergeError {
    /// The cluster or the database may succeed on a later try: a time-out, a 5xx, a conflict.
    #[error("{0}")]
    Transient(String),
    /// Trying again cannot help: the cluster rejected the objects, or the catalogue entry is gone.
    #[error("{message}")]
    Permanent { message: String, details: String },
}

/// Failure of a whole job, which apalis records on the job.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JobFailed(pub String);

impl From<kube::Error> for ConvergeError {
    fn from(error: kube::Error) -> Self {
        match &error {
            // etcd rejects an object over its size limit with a 500 that no retry can change.
            kube::Error::Api(status) if status.message.contains("request is too large") => {
                Self::Permanent {
                    message: format!(
                        "Kubernetes rejected the instance's objects: {}",
                        status.message
                    ),
                    details: "RequestTooLarge".to_owned(),
                }
            }
            kube::Error::Api(status) if is_transient_status(status.code) => Self::Transient(
                format!("Kubernetes API error {}: {}", status.code, status.message),
            ),
            kube::Error::Api(status) => Self::Permanent {
                message: format!(
                    "Kubernetes rejected the instance's objects: {}",
                    status.message
                ),
                details: if status.reason.is_empty() {
                    format!("HTTP {}", status.code)
                } else {
                    status.reason.clone()
                },
            },
            _ => Self::Transient(format!("Kubernetes request failed: {error}")),
        }
    }
}

impl From<visa_jobs::store::StoreError> for ConvergeError {
    fn from(error: visa_jobs::store::StoreError) -> Self {
        Self::Transient(error.to_string())
    }
}

fn is_transient_status(code: u16) -> bool {
    code == 409 || code == 429 || code >= 500
}

impl Converger {
    /// Runs one job under the instance's lease, so that no two workers act on an instance at
    /// once. A job that ends without its intent converged records a fault on the instance.
    pub async fn run(self: &Arc<Self>, job: &ConvergeInstance) -> Result<(), JobFailed> {
        let started = Instant::now();
        let attempt = self
            .database
            .start_job(&job.job_id, &self.worker_name, now_millis())
            .await
            .map_err(|error| JobFailed(format!("failed to record the job start: {error}")))?;
        info!(instance = %job.instance_id, job = %job.job_id, attempt, action = job.action.as_str(), "job started");

        self.wait_for_lease(job).await?;
        let renewal = self.spawn_lease_renewal(job.instance_id.clone());
        let outcome = self.converge_with_retries(job).await;
        renewal.abort();

        let result = self.finish(job, outcome, started).await;
        if let Err(error) = self
            .database
            .release_lease(&job.instance_id, &self.worker_name)
            .await
        {
            warn!(instance = %job.instance_id, job = %job.job_id, %error, "failed to release the lease; it expires on its own");
        }
        result
    }

    async fn wait_for_lease(&self, job: &ConvergeInstance) -> Result<(), JobFailed> {
        let deadline = tokio::time::Instant::now() + self.lease_ttl * 2;
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .database
                .acquire_lease(
                    &job.instance_id,
                    &self.worker_name,
                    now_millis(),
                    self.lease_ttl,
                )
                .await
            {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(error) => {
                    warn!(instance = %job.instance_id, job = %job.job_id, %error, "failed to take the lease")
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(JobFailed(format!(
                    "instance {} stayed held by another worker for {} s",
                    job.instance_id,
                    (self.lease_ttl * 2).as_secs()
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    fn spawn_lease_renewal(self: &Arc<Self>, instance_id: String) -> tokio::task::JoinHandle<()> {
        let converger = Arc::clone(self);
        tokio::spawn(async move {
            let period = converger.lease_ttl / 3;
            loop {
                tokio::time::sleep(period).await;
                let renewed = converger
                    .database
                    .acquire_lease(
                        &instance_id,
                        &converger.worker_name,
                        now_millis(),
                        converger.lease_ttl,
                    )
                    .await;
                if !matches!(renewed, Ok(true)) {
                    warn!(instance = %instance_id, "failed to renew the lease");
                }
            }
        })
    }

    /// Converges, retrying transient failures with exponential backoff within the retry budget.
    /// Returns the sequence of the intent that was converged.
    async fn converge_with_retries(
        &self,
        job: &ConvergeInstance,
    ) -> Result<i64, (i64, ConvergeError)> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_total_delay(Some(self.retry_budget))
            .without_max_times()
            .with_jitter();

        let attempt = || async {
            let record = self
                .database
                .get_instance(&job.instance_id)
                .await
                .map_err(|error| (0, ConvergeError::from(error)))?;
            let Some(record) = record else {
                return Err((
                    0,
                    ConvergeError::Permanent {
                        message: format!("instance {} is not in the database", job.instance_id),
                        details: "NotFound".to_owned(),
                    },
                ));
            };
            self.converge_once(&record)
                .await
                .map_err(|error| (record.action_seq, error))?;
            Ok(record.action_seq)
        };

        attempt
            .retry(backoff)
            .when(|(_, error)| matches!(error, ConvergeError::Transient(_)))
            .notify(|(_, error), delay| {
                warn!(instance = %job.instance_id, job = %job.job_id, %error, retry_in_ms = delay.as_millis() as u64, "transient failure");
            })
            .await
    }

    async fn finish(
        &self,
        job: &ConvergeInstance,
        outcome: Result<i64, (i64, ConvergeError)>,
        started: Instant,
    ) -> Result<(), JobFailed> {
        let now = now_millis();
        let outcome_label = if outcome.is_ok() {
            "succeeded"
        } else {
            "failed"
        };
        crate::job_metrics::record_job(job.action, outcome_label, started.elapsed());
        match outcome {
            Ok(seq) => {
                self.database
                    .finish_job(
                        &job.job_id,
                        &job.instance_id,
                        seq,
                        JobStatus::Succeeded,
                        None,
                        now,
                    )
                    .await
                    .map_err(|error| {
                        JobFailed(format!("failed to record the job outcome: {error}"))
                    })?;
                info!(instance = %job.instance_id, job = %job.job_id, converged_seq = seq, "job succeeded");
                Ok(())
            }
            Err((seq, error)) => {
                let (message, details) = match &error {
                    ConvergeError::Transient(message) => (
                        format!(
                            "gave up after {} s of failures: {message}",
                            self.retry_budget.as_secs()
                        ),
                        "RetriesExhausted".to_owned(),
                    ),
                    ConvergeError::Permanent { message, details } => {
                        (message.clone(), details.clone())
                    }
                };
                warn!(instance = %job.instance_id, job = %job.job_id, %message, "job failed");
                if seq > 0 {
                    self.database
                        .record_fault(&job.instance_id, seq, &message, &details, now)
                        .await
                        .map_err(|error| {
                            JobFailed(format!("failed to record the fault: {error}"))
                        })?;
                }
                self.database
                    .finish_job(
                        &job.job_id,
                        &job.instance_id,
                        seq,
                        JobStatus::Failed,
                        Some(&message),
                        now,
                    )
                    .await
                    .map_err(|error| {
                        JobFailed(format!("failed to record the job outcome: {error}"))
                    })?;
                Err(JobFailed(message))
            }
        }
    }

    /// Makes one pass: applies or deletes the instance's objects to match `record`.
    async fn converge_once(&self, record: &InstanceRecord) -> Result<(), ConvergeError> {
        if record.deleted_at.is_some() {
            return Ok(());
        }
        match record.desired {
            DesiredState::Running => self.apply(record, 1).await,
            DesiredState::Stopped => self.apply(record, 0).await,
            DesiredState::Deleted => self.delete(record).await,
        }
    }

    async fn apply(&self, record: &InstanceRecord, replicas: i32) -> Result<(), ConvergeError> {
        let catalogue = self.database.load_catalogue().await?;
        let flavour =
            catalogue
                .flavour(&record.flavour_id)
                .ok_or_else(|| ConvergeError::Permanent {
                    message: format!(
                        "flavour {:?} is no longer in the catalogue",
                        record.flavour_id
                    ),
                    details: "FlavourNotFound".to_owned(),
                })?;
        let image = catalogue
            .image(&record.image_id)
            .ok_or_else(|| ConvergeError::Permanent {
                message: format!("image {:?} is no longer in the catalogue", record.image_id),
                details: "ImageNotFound".to_owned(),
            })?;

        let groups = record
            .security_groups
            .iter()
            .filter_map(|name| catalogue.security_group(name))
            .collect::<Vec<_>>();
        // The pod's supplemental groups reach its processes; the owner's login session gets
        // the same groups from the user's entry, which the provisioning script writes.
        let data = self.data_mounts(record).await?;
        let provisioning = Provisioning {
            groups: data
                .supplemental_groups
                .iter()
                .map(|gid| (format!("visa-{gid}"), *gid))
                .collect(),
            sudo: groups.iter().any(|group| group.grants_sudo),
        };

        // The owned objects go first, so the pod finds its ConfigMap and its NetworkPolicies
        // from its first moment. A StatefulSet made by this pass gives them their owner
        // reference in a second pass.
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let owner = sets
            .get_opt(&record.id)
            .await?
            .as_ref()
            .and_then(objects::owner_reference);
        self.apply_owned(record, image, &groups, &provisioning, owner.as_ref())
            .await?;

        let set = objects::stateful_set(record, flavour, image, &self.settings, &data, replicas);
        let applied = sets.patch(&record.id, &params, &Patch::Apply(&set)).await?;
        info!(instance = %record.id, replicas, action = record.action.as_str(), "applied StatefulSet");
        if owner.is_none() {
            let owner = objects::owner_reference(&applied);
            self.apply_owned(record, image, &groups, &provisioning, owner.as_ref())
                .await?;
        }

        if replicas > 0 {
            self.replace_stale_pod(record).await?;
        }
        Ok(())
    }

    /// Applies the objects an instance owns besides its StatefulSet: the ConfigMap, the
    /// headless Service and the NetworkPolicies.
    async fn apply_owned(
        &self,
        record: &InstanceRecord,
        image: &Image,
        groups: &[&SecurityGroup],
        provisioning: &Provisioning,
        owner: Option<&OwnerReference>,
    ) -> Result<(), ConvergeError> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let config_maps: Api<ConfigMap> =
            Api::namespaced(self.client.clone(), &self.settings.namespace);
        let config_map = objects::config_map(record, provisioning, &self.settings, owner);
        config_maps
            .patch(
                &objects::config_map_name(&record.id),
                &params,
                &Patch::Apply(&config_map),
            )
            .await?;

        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let service = objects::service(record, image, &self.settings, owner);
        services
            .patch(
                &objects::service_name(&record.id),
                &params,
                &Patch::Apply(&service),
            )
            .await?;

        self.apply_network_policies(record, groups, owner).await
    }

    /// Applies the instance's NetworkPolicies and deletes those of groups it no longer holds.
    async fn apply_network_policies(
        &self,
        record: &InstanceRecord,
        groups: &[&SecurityGroup],
        owner: Option<&OwnerReference>,
    ) -> Result<(), ConvergeError> {
        let policies: Api<NetworkPolicy> =
            Api::namespaced(self.client.clone(), &self.settings.namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let wanted = objects::network_policies(record, groups, &self.settings, owner);
        for policy in &wanted {
            let name = policy.metadata.name.as_deref().unwrap_or_default();
            policies.patch(name, &params, &Patch::Apply(policy)).await?;
        }

        let selector = ListParams::default().labels(&objects::owned_object_selector(&record.id));
        for existing in policies.list(&selector).await? {
            let name = existing.metadata.name.unwrap_or_default();
            if !wanted
                .iter()
                .any(|policy| policy.metadata.name.as_deref() == Some(name.as_str()))
            {
                ignore_not_found(
                    policies
                        .delete(&name, &DeleteParams::default())
                        .await
                        .map(|_| ()),
                )?;
                info!(instance = %record.id, policy = %name, "deleted the NetworkPolicy of a removed security group");
            }
        }
        Ok(())
    }

    /// Deletes the pod when it comes from a pod template older than the record's last action.
    /// The StatefulSet controller replaces an old pod only once it is ready, so without this a
    /// reboot could never replace a pod stuck in, say, `ImagePullBackOff`.
    async fn replace_stale_pod(&self, record: &InstanceRecord) -> Result<(), ConvergeError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let name = objects::pod_name(&record.id);
        let Some(pod) = pods.get_opt(&name).await? else {
            return Ok(());
        };
        let stamped = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(objects::ANNOTATION_LAST_ACTION_AT));
        if stamped == Some(&format_visa_time(record.action_at))
            || pod.metadata.deletion_timestamp.is_some()
        {
            return Ok(());
        }

        // The uid precondition makes sure that only this old pod goes, never its replacement.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&name, &params).await {
            Ok(_) => {
                info!(instance = %record.id, pod = %name, "deleted the pod of an older pod template");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Looks up the synced investigations of the instance's proposals and builds their NFS
    /// mounts. Proposals that are unknown or gone get no mount.
    async fn data_mounts(&self, record: &InstanceRecord) -> Result<DataMounts, ConvergeError> {
        let Some(nfs) = &self.nfs else {
            return Ok(DataMounts::default());
        };
        let proposals = proposals_from_metadata(&record.metadata);
        if proposals.is_empty() {
            return Ok(DataMounts::default());
        }
        let investigations = self
            .database
            .investigations_for_proposals(&proposals)
            .await?;
        let data = data_mounts(
            &investigations,
            nfs,
            &[self.settings.volume_mount_path.as_str()],
        );
        info!(
            instance = %record.id,
            proposals = proposals.len(),
            known = investigations.len(),
            mounts = data.mounts.len(),
            groups = ?data.supplemental_groups,
            "resolved investigation data"
        );
        Ok(data)
    }

    /// Deletes the StatefulSet and Service and waits until the StatefulSet is gone. The volume
    /// claim stays, because the StatefulSet's retention policy is `Retain`.
    async fn delete(&self, record: &InstanceRecord) -> Result<(), ConvergeError> {
        let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.settings.namespace);

        ignore_not_found(
            sets.delete(&record.id, &DeleteParams::foreground())
                .await
                .map(|_| ()),
        )?;
        ignore_not_found(
            services
                .delete(&objects::service_name(&record.id), &DeleteParams::default())
                .await
                .map(|_| ()),
        )?;
        let policies: Api<NetworkPolicy> =
            Api::namespaced(self.client.clone(), &self.settings.namespace);
        let selector = ListParams::default().labels(&objects::owned_object_selector(&record.id));
        policies
            .delete_collection(&DeleteParams::default(), &selector)
            .await?;
        let config_maps: Api<ConfigMap> =
            Api::namespaced(self.client.clone(), &self.settings.namespace);
        config_maps
            .delete_collection(&DeleteParams::default(), &selector)
            .await?;

        if sets.get_opt(&record.id).await?.is_some() {
            return Err(ConvergeError::Transient(format!(
                "StatefulSet {} is still being deleted",
                record.id
            )));
        }
        self.database.mark_deleted(&record.id, now_millis()).await?;
        info!(instance = %record.id, "deleted StatefulSet and Service, kept the volume claim");
        Ok(())
    }
}

fn ignore_not_found(result: Result<(), kube::Error>) -> Result<(), ConvergeError> {
    match result {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}
