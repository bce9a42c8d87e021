//! `/api/instances`: create, read, list, start, shut down, reboot and delete instances.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{info, warn};
use uuid::Uuid;

use visa_jobs::model::{
    Action, CreateInstance, DesiredState, Instance, InstanceRecord, now_millis,
};
use visa_jobs::objects::{self, MAX_ID_LENGTH};
use visa_jobs::queue::{self, ConvergeInstance};

use crate::app::AppState;
use crate::error::ApiError;

/// Maximum length of an instance name in bytes. VISA's names are a prefix and a number.
const MAX_NAME_LENGTH: usize = 255;
/// Largest total size of the metadata keys and values, in bytes. Metadata lands in the
/// StatefulSet (as environment variables) and in a ConfigMap, and etcd refuses objects of more
/// than about 1.5 MiB, so the limit keeps both far below that.
const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Largest number of metadata entries; each one becomes an environment variable.
const MAX_METADATA_ENTRIES: usize = 200;
/// Largest boot command, in bytes; it is stored in the instance's ConfigMap.
const MAX_BOOT_COMMAND_BYTES: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::valid_user_name;

    #[test]
    fn user_names() {
        for good in ["jdoe", "_svc", "a.b-c_d", &"x".repeat(32)] {
            assert!(valid_user_name(good), "{good}");
        }
        for bad in [
            "",
            "Jdoe",
            "1jdoe",
            "-jdoe",
            "j doe",
            "jdoe;",
            "$(id)",
            "j\noe",
            "jöe",
            &"x".repeat(33),
        ] {
            assert!(!valid_user_name(bad), "{bad}");
        }
    }
}

#[derive(Serialize)]
pub struct Identifier {
    id: String,
    name: String,
}

pub async fn list(State(state): State<AppState>) -> Json<Vec<Instance>> {
    Json(state.view.instances())
}

pub async fn identifiers(State(state): State<AppState>) -> Json<Vec<Identifier>> {
    let identifiers = state
        .view
        .instances()
        .into_iter()
        .map(|instance| Identifier {
            id: instance.id,
            name: instance.name,
        })
        .collect();
    Json(identifiers)
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Instance>, ApiError> {
    let record = find_record(&state, &id).await?;
    state
        .view
        .instance(&record)
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

/// Creates an instance: checks the request against the catalogue, records the instance and its
/// first job in one transaction, then enqueues the job. A request VISA repeats after a time-out
/// carries the same name and gets the same id back, with nothing created twice.
pub async fn create(
    State(state): State<AppState>,
    body: Result<Json<CreateInstance>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(request) = body?;
    validate(&state, &request)?;

    // Creates in this replica run one at a time, so parallel repeats of one request see each
    // other and the quota counts each new instance. Across replicas, the unique live name in the
    // database stops a second instance of one name.
    let _serial = state.create_lock.lock().await;

    // Another API replica may have recorded it, so the database is asked when the view has none.
    let existing = match state.view.live_by_name(&request.name) {
        Some(record) => Some(record),
        None => state.database.find_live_by_name(&request.name).await?,
    };
    if let Some(existing) = existing.filter(|record| record.desired != DesiredState::Deleted) {
        info!(instance = %existing.id, name = %request.name, "repeated create returns the existing instance");
        return Ok((StatusCode::CREATED, Json(json!({ "id": existing.id }))));
    }
    if let Some(flavour) = state.catalogue.flavour(&request.flavour_id) {
        crate::capacity::check_quota(&state, flavour)?;
    }

    let id = free_id(&state, &request.name).await?;
    let now = now_millis();
    let record = InstanceRecord {
        id: id.clone(),
        name: request.name,
        image_id: request.image_id,
        flavour_id: request.flavour_id,
        security_groups: request.security_groups,
        metadata: request.metadata,
        boot_command: request.boot_command,
        node: None,
        desired: DesiredState::Running,
        action: Action::Create,
        action_at: now,
        action_seq: 1,
        applied_seq: 0,
        created_at: now,
        first_ready_at: None,
        deleted_at: None,
        fault: None,
        updated_at: now,
    };
    let job_id = Uuid::new_v4().to_string();
    match state.database.insert_instance(&record, &job_id).await {
        Ok(()) => {}
        Err(error) if error.is_unique_violation() => {
            if let Some(existing) = state.database.find_live_by_name(&record.name).await? {
                info!(instance = %existing.id, name = %record.name, "another replica created the instance first");
                return Ok((StatusCode::CREATED, Json(json!({ "id": existing.id }))));
            }
            warn!(instance = %id, name = %record.name, "instance id taken by a concurrent create");
            return Err(ApiError::Conflict(format!(
                "instance id {id} was taken by a concurrent create; send the request again"
            )));
        }
        Err(error) => return Err(error.into()),
    }
    state.view.put(record.clone());
    info!(instance = %id, job = %job_id, name = %record.name, "instance recorded");

    enqueue(&state, &record, job_id).await;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))))
}

pub async fn start(
    state: State<AppState>,
    id: Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    act(state, id, Action::Start).await
}

pub async fn shutdown(
    state: State<AppState>,
    id: Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    act(state, id, Action::Stop).await
}

pub async fn reboot(
    state: State<AppState>,
    id: Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    act(state, id, Action::Reboot).await
}

/// Deletes an instance's StatefulSet and Service; the user's volume claim stays. Deleting an
/// instance whose deletion is under way succeeds and changes nothing.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let record = find_record(&state, &id).await?;
    if record.deleted_at.is_some() {
        return Err(not_found(&id));
    }
    if record.desired == DesiredState::Deleted {
        return Ok((StatusCode::ACCEPTED, Json(json!({}))));
    }
    act(State(state), Path(id), Action::Delete).await
}

/// Records `action` as the instance's intent and enqueues a job for it.
async fn act(
    State(state): State<AppState>,
    Path(id): Path<String>,
    action: Action,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let record = find_record(&state, &id).await?;
    if record.deleted_at.is_some() {
        return Err(not_found(&id));
    }
    if record.desired == DesiredState::Deleted {
        return Err(ApiError::Conflict(format!(
            "instance {id} is being deleted, so it cannot {}",
            action.as_str()
        )));
    }

    // Starting a running instance or stopping a stopped one changes nothing, unless a failed
    // job left a fault: then the action is the way to try again.
    let already = matches!(
        (action, record.desired),
        (Action::Start, DesiredState::Running) | (Action::Stop, DesiredState::Stopped)
    );
    if already && record.fault.is_none() {
        info!(instance = %id, action = action.as_str(), "action changes nothing");
        return Ok((StatusCode::ACCEPTED, Json(json!({}))));
    }

    let job_id = Uuid::new_v4().to_string();
    let Some(updated) = state
        .database
        .record_action(&id, action, &job_id, now_millis())
        .await?
    else {
        return Err(ApiError::Conflict(format!(
            "instance {id} was deleted while the {} request was handled",
            action.as_str()
        )));
    };
    state.view.put(updated.clone());
    info!(instance = %id, job = %job_id, action = action.as_str(), seq = updated.action_seq, "action recorded");

    enqueue(&state, &updated, job_id).await;
    Ok((StatusCode::ACCEPTED, Json(json!({}))))
}

/// Body of the security group endpoints.
#[derive(Deserialize)]
pub struct SecurityGroupName {
    name: String,
}

pub async fn security_groups(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<String>>, ApiError> {
    let record = live_record(&state, &id).await?;
    Ok(Json(record.security_groups))
}

pub async fn add_security_group(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<SecurityGroupName>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(SecurityGroupName { name }) = body?;
    if !state.catalogue.has_security_group(&name) {
        return Err(ApiError::unprocessable(format!(
            "security group {name:?} not found: use a name from /api/security_groups"
        )));
    }
    change_security_groups(&state, &id, |groups| {
        if !groups.contains(&name) {
            groups.push(name.clone());
        }
    })
    .await
}

pub async fn remove_security_group(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<SecurityGroupName>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(SecurityGroupName { name }) = body?;
    if !state.catalogue.has_security_group(&name) {
        return Err(ApiError::unprocessable(format!(
            "security group {name:?} not found: use a name from /api/security_groups"
        )));
    }
    change_security_groups(&state, &id, |groups| groups.retain(|group| group != &name)).await
}

/// Applies `change` to the instance's groups; an unchanged list records nothing.
async fn change_security_groups(
    state: &AppState,
    id: &str,
    change: impl FnOnce(&mut Vec<String>),
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let record = live_record(state, id).await?;
    let mut groups = record.security_groups.clone();
    change(&mut groups);
    if groups == record.security_groups {
        return Ok((StatusCode::OK, Json(json!({}))));
    }

    let job_id = Uuid::new_v4().to_string();
    let Some(updated) = state
        .database
        .record_security_groups(id, &groups, &job_id, now_millis())
        .await?
    else {
        return Err(ApiError::Conflict(format!(
            "instance {id} is being deleted"
        )));
    };
    state.view.put(updated.clone());
    info!(instance = %id, job = %job_id, groups = ?groups, "security groups recorded");
    enqueue(state, &updated, job_id).await;
    Ok((StatusCode::OK, Json(json!({}))))
}

/// Body of `POST /api/instances/{id}/migrate`, as VISA sends it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Migration {
    host: String,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "OpenStack's option; a pod restart has no block migration"
    )]
    block_migration: Option<bool>,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "OpenStack's option; Kubernetes has no disk overcommit"
    )]
    disk_over_commit: Option<bool>,
}

/// Moves a running instance to another node by restarting its pod there. Returns 404 when the
/// operators turned migration off, which VISA reads as "migration not available".
pub async fn migrate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<Migration>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !state.migration_enabled {
        return Err(ApiError::NotFound(
            "migration is not available on this provider".to_owned(),
        ));
    }
    let Json(migration) = body?;
    let record = live_record(&state, &id).await?;
    if !state.view.node_exists(&migration.host) {
        return Err(ApiError::unprocessable(format!(
            "host {:?} not found: use a node name from /api/hypervisor_inventories",
            migration.host
        )));
    }
    if record.desired != DesiredState::Running {
        return Err(ApiError::Conflict(format!(
            "instance {id} is not running, so it cannot migrate"
        )));
    }

    let job_id = Uuid::new_v4().to_string();
    let Some(updated) = state
        .database
        .record_migration(&id, &migration.host, &job_id, now_millis())
        .await?
    else {
        return Err(ApiError::Conflict(format!(
            "instance {id} stopped or is being deleted"
        )));
    };
    state.view.put(updated.clone());
    info!(instance = %id, job = %job_id, node = %migration.host, "migration recorded");
    enqueue(&state, &updated, job_id).await;
    Ok((StatusCode::ACCEPTED, Json(json!({}))))
}

/// Finds an instance that exists and is not being deleted.
async fn live_record(state: &AppState, id: &str) -> Result<InstanceRecord, ApiError> {
    let record = find_record(state, id).await?;
    if record.deleted_at.is_some() {
        return Err(not_found(id));
    }
    if record.desired == DesiredState::Deleted {
        return Err(ApiError::Conflict(format!(
            "instance {id} is being deleted"
        )));
    }
    Ok(record)
}

/// Enqueues the job of a recorded intent. When Redis is down the intent stays recorded and the
/// workers' drift sweep enqueues it later, so the request still succeeds.
async fn enqueue(state: &AppState, record: &InstanceRecord, job_id: String) {
    let job = ConvergeInstance {
        job_id: job_id.clone(),
        instance_id: record.id.clone(),
        action: record.action,
        seq: record.action_seq,
    };
    let mut storage = state.queue.clone();
    if let Err(error) = queue::enqueue(&mut storage, job).await {
        warn!(instance = %record.id, job = %job_id, %error, "failed to enqueue; the drift sweep will enqueue the intent");
    }
}

/// Finds an instance in the view, or in the database when another API replica created it.
async fn find_record(state: &AppState, id: &str) -> Result<InstanceRecord, ApiError> {
    if let Some(record) = state.view.record(id) {
        return Ok(record);
    }
    if !valid_id(id) {
        return Err(not_found(id));
    }
    match state.database.get_instance(id).await? {
        Some(record) => {
            state.view.put(record.clone());
            Ok(record)
        }
        None => Err(not_found(id)),
    }
}

fn not_found(id: &str) -> ApiError {
    let shown: String = id.chars().take(80).collect();
    ApiError::NotFound(format!("instance {shown:?} not found"))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LENGTH + 7
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Returns an id derived from the name that no instance, live or deleted, has had.
async fn free_id(state: &AppState, name: &str) -> Result<String, ApiError> {
    let base = objects::id_from_name(name).ok_or_else(|| {
        ApiError::unprocessable(format!(
            "name {name:?} is invalid: it must contain at least one ASCII letter or digit"
        ))
    })?;
    if !state.database.id_exists(&base).await? {
        return Ok(base);
    }
    for _ in 0..8 {
        let suffix = &Uuid::new_v4().simple().to_string()[..6];
        let candidate = format!("{base}-{suffix}");
        if !state.database.id_exists(&candidate).await? {
            return Ok(candidate);
        }
    }
    Err(ApiError::Internal(format!(
        "no free id found for name {name:?}"
    )))
}

/// Checks a POSIX user name as instances' `useradd` accepts it, the same rule as the
/// provisioning script's.
fn valid_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    first_ok
        && name.len() <= 32
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

fn validate(state: &AppState, request: &CreateInstance) -> Result<(), ApiError> {
    if request.name.trim().is_empty() {
        return Err(ApiError::unprocessable(
            "name is empty: send the instance name",
        ));
    }
    if request.name.len() > MAX_NAME_LENGTH {
        return Err(ApiError::unprocessable(format!(
            "name is {} bytes long: send at most {MAX_NAME_LENGTH}",
            request.name.len()
        )));
    }

    let catalogue = state.catalogue.as_ref();
    if catalogue.flavour(&request.flavour_id).is_none() {
        return Err(ApiError::unprocessable(format!(
            "flavourId {:?} not found: use an id from /api/flavours",
            request.flavour_id
        )));
    }
    if catalogue.image(&request.image_id).is_none() {
        return Err(ApiError::unprocessable(format!(
            "imageId {:?} not found: use an id from /api/images",
            request.image_id
        )));
    }
    for group in &request.security_groups {
        if !catalogue.has_security_group(group) {
            return Err(ApiError::unprocessable(format!(
                "security group {group:?} not found: use a name from /api/security_groups"
            )));
        }
    }

    // The owner becomes a user inside the instance, so it must be a POSIX user name.
    let Some(owner) = request.metadata.get("owner") else {
        return Err(ApiError::unprocessable(
            "metadata.owner is missing: send the owner's user name",
        ));
    };
    if !valid_user_name(owner) {
        let shown: String = owner.chars().take(64).collect();
        return Err(ApiError::unprocessable(format!(
            "metadata.owner {shown:?} is not a valid user name: use at most 32 characters of a-z, \
             0-9, '_', '.' and '-', starting with a letter or '_'"
        )));
    }

    let metadata_bytes: usize = request
        .metadata
        .iter()
        .map(|(key, value)| key.len() + value.len())
        .sum();
    let boot_command_bytes = request.boot_command.as_ref().map_or(0, String::len);
    if boot_command_bytes > MAX_BOOT_COMMAND_BYTES {
        return Err(ApiError::unprocessable(format!(
            "bootCommand is {boot_command_bytes} bytes: send at most {MAX_BOOT_COMMAND_BYTES}"
        )));
    }
    if request.metadata.len() > MAX_METADATA_ENTRIES {
        return Err(ApiError::unprocessable(format!(
            "metadata has {} entries: send at most {MAX_METADATA_ENTRIES}",
            request.metadata.len()
        )));
    }
    if metadata_bytes > MAX_METADATA_BYTES {
        return Err(ApiError::unprocessable(format!(
            "metadata is {metadata_bytes} bytes: send at most {MAX_METADATA_BYTES}"
        )));
    }
    Ok(())
}
