//! List and get-by-ID endpoints for incidents, alerts and machines (XDR, MDE and Graph),
//! with OData paging (`$top`, `$skip`, absolute `@odata.nextLink`) and a minimal `$filter`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State as AxState};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use http::{HeaderMap, StatusCode, Uri, header};
use serde_json::{Value, json};

use super::SandboxOptions;
use super::api::api_error;
use super::data::{Counts, machine};
use super::data_alerts::{graph_alert, graph_incident, mde_alert, xdr_incident};
use super::filter::Filter;
use super::state::State;
use super::tokens::Caller;

const ODATA_JSON: &str =
    "application/json; odata.metadata=minimal; odata.streaming=true; charset=utf-8";

/// A listable collection of per-tenant items.
#[derive(Clone, Copy, Debug)]
enum Collection {
    Incidents,
    Alerts,
    Machines,
    GraphIncidents,
    GraphAlerts,
}

const ALL: [Collection; 5] = [
    Collection::Incidents,
    Collection::Alerts,
    Collection::Machines,
    Collection::GraphIncidents,
    Collection::GraphAlerts,
];

impl Collection {
    fn path(self) -> &'static str {
        match self {
            Collection::Incidents => "/api/incidents",
            Collection::Alerts => "/api/alerts",
            Collection::Machines => "/api/machines",
            Collection::GraphIncidents => "/v1.0/security/incidents",
            Collection::GraphAlerts => "/v1.0/security/alerts_v2",
        }
    }

    fn len(self, counts: Counts) -> usize {
        match self {
            Collection::Incidents | Collection::GraphIncidents => counts.incidents,
            Collection::Alerts | Collection::GraphAlerts => counts.alerts,
            Collection::Machines => counts.machines,
        }
    }

    fn item(self, tenant: &str, index: usize, counts: Counts) -> Value {
        match self {
            Collection::Incidents => xdr_incident(tenant, index, counts),
            Collection::Alerts => mde_alert(tenant, index, counts),
            Collection::Machines => machine(counts.seed, tenant, index),
            Collection::GraphIncidents => graph_incident(tenant, index, counts),
            Collection::GraphAlerts => graph_alert(tenant, index, counts),
        }
    }

    /// The properties Microsoft documents `$filter` on for this list (MDE's alerts page spells
    /// two of them `InvestigationId` and `asssignedTo`; matching is case-insensitive, and
    /// the real property is `assignedTo`).
    fn filterable(self) -> &'static [&'static str] {
        match self {
            // https://learn.microsoft.com/defender-xdr/api-list-incidents
            Collection::Incidents => &["lastUpdateTime", "createdTime", "status", "assignedTo"],
            // https://learn.microsoft.com/defender-endpoint/api/get-alerts
            Collection::Alerts => &[
                "alertCreationTime",
                "lastUpdateTime",
                "incidentId",
                "investigationId",
                "id",
                "assignedTo",
                "detectionSource",
                "lastEventTime",
                "status",
                "severity",
                "category",
            ],
            // https://learn.microsoft.com/defender-endpoint/api/get-machines
            Collection::Machines => &[
                "computerDnsName",
                "id",
                "version",
                "deviceValue",
                "aadDeviceId",
                "machineTags",
                "lastSeen",
                "exposureLevel",
                "onboardingStatus",
                "lastIpAddress",
                "healthStatus",
                "osPlatform",
                "riskScore",
                "rbacGroupId",
            ],
            // https://learn.microsoft.com/graph/api/security-list-incidents
            Collection::GraphIncidents => &[
                "assignedTo",
                "classification",
                "createdDateTime",
                "determination",
                "lastUpdateDateTime",
                "severity",
                "status",
            ],
            // https://learn.microsoft.com/graph/api/security-list-alerts_v2
            Collection::GraphAlerts => &[
                "assignedTo",
                "classification",
                "determination",
                "createdDateTime",
                "lastUpdateDateTime",
                "severity",
                "serviceSource",
                "status",
            ],
        }
    }

    /// The documented maximum of `$top` (larger values are capped to it).
    fn max_top(self) -> usize {
        match self {
            Collection::Incidents => 100,
            Collection::Alerts | Collection::Machines => 10_000,
            Collection::GraphIncidents => 50,
            Collection::GraphAlerts => 2_000,
        }
    }

    fn is_graph(self) -> bool {
        matches!(self, Collection::GraphIncidents | Collection::GraphAlerts)
    }

    fn id_key(self) -> &'static str {
        match self {
            Collection::Incidents => "incidentId",
            _ => "id",
        }
    }

    fn context(self, origin: &str) -> String {
        let suffix = match self {
            Collection::Incidents => "/api/$metadata#Incidents",
            Collection::Alerts => "/api/$metadata#Alerts",
            Collection::Machines => "/api/$metadata#Machines",
            Collection::GraphIncidents => "/v1.0/$metadata#security/incidents",
            Collection::GraphAlerts => "/v1.0/$metadata#security/alerts_v2",
        };
        format!("{origin}{suffix}")
    }
}

type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// `GET {collection}` and `GET {collection}/{id}` for every collection.
pub(super) fn routes() -> Router<Arc<State>> {
    ALL.iter().fold(Router::new(), |router, &coll| {
        let list_handler = move |AxState(st): AxState<Arc<State>>,
                                 Extension(caller): Extension<Caller>,
                                 headers: HeaderMap,
                                 uri: Uri,
                                 query: QueryPairs| async move {
            list(coll, &st, &caller.tenant, &headers, &uri, query)
        };
        let one_handler =
            move |AxState(st): AxState<Arc<State>>,
                  Extension(caller): Extension<Caller>,
                  Path(id): Path<String>| async move { one(coll, &st, &caller.tenant, &id) };
        router
            .route(coll.path(), get(list_handler))
            .route(&format!("{}/{{id}}", coll.path()), get(one_handler))
    })
}

fn counts(opts: &SandboxOptions) -> Counts {
    Counts {
        incidents: opts.incidents_per_tenant,
        alerts: opts.alerts_per_tenant,
        machines: opts.machines_per_tenant,
        seed: opts.seed,
    }
}

fn list(
    coll: Collection,
    st: &State,
    tenant: &str,
    headers: &HeaderMap,
    uri: &Uri,
    query: QueryPairs,
) -> Response {
    let Ok(Query(params)) = query else {
        return bad_request(coll, "The query string is malformed.");
    };
    let page = match Page::from_params(&params, &st.opts, coll.max_top()) {
        Ok(page) => page,
        Err(message) => return bad_request(coll, &message),
    };
    let filter = match filter_of(&params, coll.filterable()) {
        Ok(filter) => filter,
        Err(message) => return bad_request(coll, &message),
    };
    let counts = counts(&st.opts);
    let mut items: Vec<Value> = (0..coll.len(counts))
        .map(|i| coll.item(tenant, i, counts))
        .filter(|item| filter.matches(item))
        .skip(page.skip)
        .take(page.top.saturating_add(1))
        .collect();
    let more = page.top > 0 && items.len() > page.top;
    items.truncate(page.top);
    let origin = st.origin(headers);
    let mut body = json!({"@odata.context": coll.context(&origin), "value": items});
    if more {
        body["@odata.nextLink"] = json!(next_link(&origin, uri.path(), &params, page));
    }
    odata(StatusCode::OK, &body)
}

fn one(coll: Collection, st: &State, tenant: &str, id: &str) -> Response {
    let counts = counts(&st.opts);
    let found = (0..coll.len(counts))
        .map(|i| coll.item(tenant, i, counts))
        .find(|item| id_matches(&item[coll.id_key()], id));
    match found {
        Some(item) => odata(StatusCode::OK, &item),
        None => api_error(
            coll.is_graph(),
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("'{id}' was not found."),
        ),
    }
}

fn id_matches(value: &Value, id: &str) -> bool {
    match value {
        Value::String(s) => s.eq_ignore_ascii_case(id),
        Value::Number(n) => n.to_string() == id,
        _ => false,
    }
}

fn filter_of(params: &[(String, String)], allowed: &[&str]) -> Result<Filter, String> {
    let Some((_, text)) = params.iter().find(|(k, _)| k == "$filter") else {
        return Ok(Filter::default());
    };
    let mut filter = Filter::parse(text).map_err(|e| format!("Invalid $filter: {e}"))?;
    filter.check_fields(allowed)?;
    Ok(filter)
}

fn odata(status: StatusCode, body: &Value) -> Response {
    let headers = [
        (header::CONTENT_TYPE, ODATA_JSON),
        (header::HeaderName::from_static("odata-version"), "4.0"),
    ];
    (status, headers, body.to_string()).into_response()
}

fn bad_request(coll: Collection, message: &str) -> Response {
    api_error(
        coll.is_graph(),
        StatusCode::BAD_REQUEST,
        "BadRequest",
        message,
    )
}

/// The window of a list request.
#[derive(Clone, Copy, Debug)]
struct Page {
    top: usize,
    skip: usize,
}

impl Page {
    fn from_params(
        params: &[(String, String)],
        opts: &SandboxOptions,
        max_top: usize,
    ) -> Result<Page, String> {
        let number = |name: &str| -> Result<Option<usize>, String> {
            match params.iter().find(|(k, _)| k == name) {
                Some((_, v)) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("Invalid value '{v}' for {name}.")),
                None => Ok(None),
            }
        };
        let top = number("$top")?
            .unwrap_or(opts.page_size)
            .min(max_top)
            .min(opts.max_page_size);
        let skip = number("$skip")?.unwrap_or(0);
        Ok(Page { top, skip })
    }
}

/// The absolute URL of the next page: same path and other parameters, `$skip` advanced.
fn next_link(origin: &str, path: &str, params: &[(String, String)], page: Page) -> String {
    let mut query: Vec<String> = params
        .iter()
        .filter(|(k, _)| k != "$top" && k != "$skip")
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    query.push(format!("$top={}", page.top));
    query.push(format!("$skip={}", page.skip.saturating_add(page.top)));
    format!("{origin}{path}?{}", query.join("&"))
}

/// Percent-encodes a query component, leaving OData's usual characters readable.
fn encode(text: &str) -> String {
    let keep = |b: u8| b.is_ascii_alphanumeric() || b"-._~$'(),:@/!*".contains(&b);
    text.bytes()
        .map(|b| {
            if keep(b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{XDR, get_json, start, token};
    use super::super::{TENANT_A, TENANT_B};
    use super::*;

    const GRAPH: &str = "https://graph.microsoft.com";

    #[tokio::test]
    async fn following_next_links_visits_every_item_once() {
        let sb = start(SandboxOptions::default()).await;
        let a = token(&sb, TENANT_A, XDR).await;
        let mut url = "/api/incidents?$top=50".to_owned();
        let mut ids = Vec::new();
        let mut pages = 0;
        loop {
            let page = get_json(&sb, &a, &url, 200).await;
            pages += 1;
            assert_eq!(
                page["@odata.context"],
                format!("{}/api/$metadata#Incidents", sb.url())
            );
            for item in page["value"].as_array().expect("value") {
                assert_eq!(item["tenantId"], TENANT_A);
                ids.push(item["incidentId"].as_u64().expect("numeric id"));
            }
            match page["@odata.nextLink"].as_str() {
                Some(next) => url = next.to_owned(),
                None => break,
            }
        }
        assert_eq!((pages, ids.len()), (3, 120));
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 120);
    }

    #[tokio::test]
    async fn next_link_is_absolute_to_the_host_asked() {
        let sb = start(SandboxOptions::default()).await;
        let a = token(&sb, TENANT_A, XDR).await;
        let page = get_json(&sb, &a, "/api/machines?$top=30&$skip=30", 200).await;
        assert_eq!(page["value"].as_array().map(Vec::len), Some(30));
        assert_eq!(
            page["@odata.nextLink"],
            format!("{}/api/machines?$top=30&$skip=60", sb.url())
        );
        let last = get_json(&sb, &a, "/api/machines?$top=30&$skip=60", 200).await;
        assert_eq!(last["value"].as_array().map(Vec::len), Some(20));
        assert!(last.get("@odata.nextLink").is_none());
        let default = get_json(&sb, &a, "/api/alerts", 200).await;
        assert_eq!(default["value"].as_array().map(Vec::len), Some(50));
    }

    #[tokio::test]
    async fn data_is_per_tenant_and_stable() {
        let sb = start(SandboxOptions::default()).await;
        let a = token(&sb, TENANT_A, XDR).await;
        let b = token(&sb, TENANT_B, XDR).await;
        let first_a = get_json(&sb, &a, "/api/incidents?$top=5", 200).await;
        let again_a = get_json(&sb, &a, "/api/incidents?$top=5", 200).await;
        let first_b = get_json(&sb, &b, "/api/incidents?$top=5", 200).await;
        assert_eq!(first_a, again_a);
        assert_ne!(
            first_a["value"][0]["incidentId"],
            first_b["value"][0]["incidentId"]
        );
        assert_eq!(first_b["value"][0]["tenantId"], TENANT_B);
    }

    #[tokio::test]
    async fn filter_and_get_by_id_work_on_graph_too() {
        let sb = start(SandboxOptions::default()).await;
        let g = token(&sb, TENANT_A, GRAPH).await;
        let active = get_json(
            &sb,
            &g,
            "/v1.0/security/incidents?$filter=status%20eq%20'active'&$top=100",
            200,
        )
        .await;
        let items = active["value"].as_array().expect("value");
        assert!(!items.is_empty() && items.iter().all(|i| i["status"] == "active"));
        let id = items[0]["id"].as_str().expect("id");
        let one = get_json(&sb, &g, &format!("/v1.0/security/incidents/{id}"), 200).await;
        assert_eq!(one["id"], id);
        get_json(&sb, &g, "/v1.0/security/alerts_v2/nope", 404).await;
        get_json(
            &sb,
            &g,
            "/v1.0/security/alerts_v2?$filter=status%2520eq",
            400,
        )
        .await;
        let alerts = get_json(&sb, &g, "/v1.0/security/alerts_v2?$top=1", 200).await;
        assert_eq!(
            alerts["@odata.context"],
            format!("{}/v1.0/$metadata#security/alerts_v2", sb.url())
        );
    }

    #[test]
    fn next_link_keeps_other_parameters_encoded() {
        let params = vec![
            ("$filter".to_owned(), "status eq 'Active'".to_owned()),
            ("$top".to_owned(), "10".to_owned()),
        ];
        let link = next_link(
            "http://h:1",
            "/api/incidents",
            &params,
            Page { top: 10, skip: 20 },
        );
        assert_eq!(
            link,
            "http://h:1/api/incidents?$filter=status%20eq%20'Active'&$top=10&$skip=30"
        );
    }

    #[test]
    fn page_caps_top_and_rejects_garbage() {
        let opts = SandboxOptions::default();
        let params = vec![("$top".to_owned(), "1000".to_owned())];
        let incidents = Collection::Incidents.max_top();
        let top = |max| Page::from_params(&params, &opts, max).map(|p| p.top);
        assert_eq!(top(incidents), Ok(100));
        assert_eq!(top(Collection::Machines.max_top()), Ok(1000));
        let params = vec![("$skip".to_owned(), "-1".to_owned())];
        assert!(Page::from_params(&params, &opts, incidents).is_err());
    }

    #[tokio::test]
    async fn filter_takes_only_the_documented_properties() {
        let sb = start(SandboxOptions::default()).await;
        let a = token(&sb, TENANT_A, XDR).await;
        let new = get_json(
            &sb,
            &a,
            "/api/incidents?$filter=Status%20eq%20'Active'",
            200,
        )
        .await;
        let items = new["value"].as_array().expect("value");
        assert!(!items.is_empty() && items.iter().all(|i| i["status"] == "Active"));
        let refused = get_json(
            &sb,
            &a,
            "/api/incidents?$filter=severity%20eq%20'High'",
            400,
        )
        .await;
        assert_eq!(
            refused["error"]["message"],
            "The property 'severity' cannot be used in the $filter query option."
        );
        get_json(&sb, &a, "/api/alerts?$filter=severity%20eq%20'High'", 200).await;
        let g = token(&sb, TENANT_A, GRAPH).await;
        let refused = get_json(
            &sb,
            &g,
            "/v1.0/security/alerts_v2?$filter=title%20eq%20'x'",
            400,
        )
        .await;
        assert_eq!(refused["error"]["code"], "BadRequest");
        assert!(
            refused["error"]["innerError"]["request-id"].is_string(),
            "{refused}"
        );
    }
}
