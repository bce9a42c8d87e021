//! `/operator/instances`: the state of the LDAP sync, then every instance with its owner,
//! state, fault, placement and last jobs, filtered by `state` and `owner` query parameters.
//! Instances come from the API's in-memory view, so a page load makes no Kubernetes request.
//! Only the LDAP sync runs and the last jobs come from the database.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::{Query, State};
use axum::response::Response;
use futures::StreamExt;
use serde::Deserialize;
use tracing::warn;

use visa_jobs::model::{Instance, InstanceRecord, Millis, now_millis};
use visa_jobs::store::{JobRecord, LdapSyncRun, StoreError, SyncResult};

use crate::app::AppState;
use crate::html::{encode_query_value, escape, format_age, format_time, page};
use crate::ldap_status::{self, LdapSyncStatus, finished_at};

/// Jobs shown per instance.
const JOBS_PER_INSTANCE: i64 = 3;
/// Database queries for the instances' jobs run at once per page load.
const JOB_QUERIES_AT_ONCE: usize = 8;

#[derive(Debug, Default, Deserialize)]
pub struct OverviewQuery {
    /// State word such as `ACTIVE`, compared without regard to case, or empty for any.
    #[serde(default)]
    state: String,
    /// Owner from the instance's metadata, compared exactly, or empty for any.
    #[serde(default)]
    owner: String,
}

struct Row {
    record: InstanceRecord,
    instance: Instance,
    node: Option<String>,
    jobs: Result<Vec<JobRecord>, StoreError>,
}

pub async fn instances(
    State(state): State<AppState>,
    Query(query): Query<OverviewQuery>,
) -> Response {
    let state_filter = query.state.trim().to_ascii_uppercase();
    let owner_filter = query.owner.trim().to_owned();

    let all: Vec<(InstanceRecord, Instance)> = state
        .view
        .live_records()
        .into_iter()
        .filter_map(|record| {
            let instance = state.view.instance(&record)?;
            Some((record, instance))
        })
        .collect();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (_, instance) in &all {
        *counts.entry(instance.state.as_str()).or_default() += 1;
    }

    let selected: Vec<(InstanceRecord, Instance)> = all
        .into_iter()
        .filter(|(record, instance)| {
            (state_filter.is_empty() || instance.state.as_str() == state_filter)
                && (owner_filter.is_empty() || record.owner() == Some(owner_filter.as_str()))
        })
        .collect();
    let rows = load_rows(&state, selected).await;
    let ldap_sync = ldap_status::load(&state.database).await;
    if let Err(error) = &ldap_sync {
        warn!(%error, "failed to load the LDAP sync status for the overview");
    }

    let mut body = String::new();
    write_ldap_sync(&mut body, &ldap_sync, now_millis());
    write_summary(&mut body, &counts, &owner_filter);
    write_filter_form(&mut body, &state_filter, &owner_filter);
    write_table(&mut body, &rows);
    page("Instances", &body)
}

/// Adds each instance's node and last jobs, querying the database for a few instances at once.
async fn load_rows(state: &AppState, selected: Vec<(InstanceRecord, Instance)>) -> Vec<Row> {
    let rows: Vec<Row> = futures::stream::iter(selected)
        .map(|(record, instance)| async move {
            let jobs = state
                .database
                .jobs_of_instance(&record.id, JOBS_PER_INSTANCE)
                .await;
            let node = state.view.node_of(&record.id);
            Row {
                record,
                instance,
                node,
                jobs,
            }
        })
        .buffered(JOB_QUERIES_AT_ONCE)
        .collect()
        .await;
    let failures = rows.iter().filter(|row| row.jobs.is_err()).count();
    if let Some(Err(error)) = rows.iter().map(|row| &row.jobs).find(|jobs| jobs.is_err()) {
        warn!(%error, failures, "failed to load the instances' jobs for the overview");
    }
    rows
}

/// Writes the "LDAP sync" section: the last finished run with its result, counts and error,
/// a run in progress, and the last success.
fn write_ldap_sync(body: &mut String, status: &Result<LdapSyncStatus, StoreError>, now: Millis) {
    body.push_str("<section class=\"ldap-sync\" id=\"ldap-sync\">\n<h3>LDAP sync</h3>\n");
    let status = match status {
        Ok(status) => status,
        Err(_) => {
            body.push_str(
                "<p class=\"fault\">unavailable: the database did not answer</p>\n</section>\n",
            );
            return;
        }
    };
    if status.never_ran() {
        // The API does not read the workers' LDAP settings, so it cannot tell the two apart.
        body.push_str(
            "<p><span class=\"muted\">never ran</span>: no sync is recorded. Either it is not \
             configured (workers sync only with VISA_LDAP_URL set) or no worker has started one \
             yet.</p>\n</section>\n",
        );
        return;
    }

    if let Some(run) = &status.running {
        let _ = writeln!(
            body,
            "<p><span class=\"sync-running\">running</span> since {started} ({age} ago), \
             {origin}</p>",
            started = format_time(run.started_at),
            age = format_age(now - run.started_at),
            origin = escape(&run.origin),
        );
    }
    if let Some(run) = &status.finished {
        write_finished_run(body, run, now);
    }
    let last_success = match &status.last_success {
        Some(run) => format!(
            "{} ({} ago)",
            format_time(finished_at(run)),
            format_age(now - finished_at(run))
        ),
        None => "<span class=\"fault\">never</span>".to_owned(),
    };
    let _ = writeln!(body, "<p>Last success: {last_success}</p>\n</section>");
}

fn write_finished_run(body: &mut String, run: &LdapSyncRun, now: Millis) {
    let result = run.result.as_str();
    let attempts = if run.attempts == 1 {
        "1 attempt".to_owned()
    } else {
        format!("{} attempts", run.attempts)
    };
    let _ = writeln!(
        body,
        "<p>Last run: <span class=\"sync-{result}\">{result}</span> at {finished} \
         ({age} ago), {origin}, {attempts}</p>",
        finished = format_time(finished_at(run)),
        age = format_age(now - finished_at(run)),
        origin = escape(&run.origin),
    );
    if run.result == SyncResult::Succeeded {
        let counts = &run.counts;
        let _ = writeln!(
            body,
            "<p>Investigations: synced {}, added {}, changed {}, gone {}, skipped {} \
             (entries {}, invalid paths dropped {})</p>",
            counts.synced,
            counts.added,
            counts.changed,
            counts.gone,
            counts.skipped,
            counts.entries,
            counts.skipped_paths,
        );
    }
    if let Some(error) = &run.error {
        let _ = writeln!(
            body,
            "<p>Error: <span class=\"fault\">{}</span></p>",
            escape(error)
        );
    }
}

fn write_summary(body: &mut String, counts: &BTreeMap<&'static str, usize>, owner: &str) {
    let total: usize = counts.values().sum();
    let owner_parameter = if owner.is_empty() {
        String::new()
    } else {
        format!("&amp;owner={}", encode_query_value(owner))
    };
    body.push_str("<div class=\"summary\">");
    let _ = write!(
        body,
        "<a href=\"/operator/instances?state={owner_parameter}\">all: {total}</a>"
    );
    for (state, count) in counts {
        let _ = write!(
            body,
            "<a class=\"state-{state}\" href=\"/operator/instances?state={state}{owner_parameter}\">{state}: {count}</a>"
        );
    }
    body.push_str("</div>\n");
}

fn write_filter_form(body: &mut String, state: &str, owner: &str) {
    let _ = writeln!(
        body,
        "<form method=\"get\" action=\"/operator/instances\">\
         <label>State <input name=\"state\" value=\"{}\" size=\"12\"></label> \
         <label>Owner <input name=\"owner\" value=\"{}\" size=\"16\"></label> \
         <button type=\"submit\">Filter</button> <a href=\"/operator/instances\">clear</a></form>",
        escape(state),
        escape(owner)
    );
}

fn write_table(body: &mut String, rows: &[Row]) {
    if rows.is_empty() {
        body.push_str("<p class=\"muted\">No instance matches.</p>\n");
        return;
    }
    body.push_str(
        "<table>\n<tr><th>Instance</th><th>Owner</th><th>State</th><th>Fault</th>\
         <th>Flavour</th><th>Image</th><th>Node</th><th>Address</th><th>Age</th>\
         <th>Last jobs</th></tr>\n",
    );
    let now = now_millis();
    for row in rows {
        write_row(body, row, now);
    }
    body.push_str("</table>\n");
}

fn write_row(body: &mut String, row: &Row, now: i64) {
    let state = row.instance.state.as_str();
    let fault = match &row.instance.fault {
        Some(fault) => format!(
            "<span class=\"fault\"><b>{}</b>: {}</span>",
            escape(&fault.details),
            escape(&fault.message)
        ),
        None => String::new(),
    };
    let optional = |value: Option<&str>| match value {
        Some(value) => escape(value),
        None => "<span class=\"muted\">-</span>".to_owned(),
    };
    let _ = writeln!(
        body,
        "<tr id=\"instance-{id}\"><td>{name}<br><span class=\"muted\">{id}</span></td>\
         <td>{owner}</td><td><span class=\"state state-{state}\">{state}</span></td>\
         <td>{fault}</td><td>{flavour}</td><td>{image}</td><td>{node}</td><td>{address}</td>\
         <td title=\"{created}\">{age}</td><td>{jobs}</td></tr>",
        id = escape(&row.record.id),
        name = escape(&row.record.name),
        owner = optional(row.record.owner()),
        flavour = escape(&row.record.flavour_id),
        image = escape(&row.record.image_id),
        node = optional(row.node.as_deref()),
        address = optional(row.instance.address.as_deref()),
        created = format_time(row.record.created_at),
        age = format_age(now - row.record.created_at),
        jobs = jobs_cell(&row.jobs),
    );
}

fn jobs_cell(jobs: &Result<Vec<JobRecord>, StoreError>) -> String {
    let jobs = match jobs {
        Ok(jobs) if jobs.is_empty() => return "<span class=\"muted\">none</span>".to_owned(),
        Ok(jobs) => jobs,
        Err(_) => {
            return "<span class=\"fault\">unavailable: the database did not answer</span>"
                .to_owned();
        }
    };
    let mut cell = String::from("<ul class=\"jobs\">");
    for job in jobs {
        let _ = write!(
            cell,
            "<li><span class=\"job-{status}\">{action} {status}</span>, attempts {attempts}, \
             {time}{error}</li>",
            action = escape(&job.action),
            status = escape(&job.status),
            attempts = job.attempts,
            time = format_time(job.updated_at),
            error = job
                .error
                .as_deref()
                .map(|error| format!(": <span class=\"fault\">{}</span>", escape(error)))
                .unwrap_or_default(),
        );
    }
    cell.push_str("</ul>");
    cell
}
