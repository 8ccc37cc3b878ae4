//! The security property test (issue 4): random requests over every route, with random
//! credentials, against one real server with authentication on, checked against an independent
//! model of what each credential may do.
//!
//! For every response: never a 5xx; an invalid credential always gets 401 (but on the health
//! checks); the body holds no canary of a (dataset, tenant) the credential may not read; a write
//! (or bulk line) that succeeded had the write scope, and a valid token without the scope a
//! well-formed request needs gets exactly 403. At the end, every canary record no accepted write
//! touched still holds its canary data.
//!
//! `TENANTSYNC_SECURITY_REQUESTS` sets the number of random requests (default 10,000), spread
//! over 50 proptest cases.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, env_or};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError, TestRunner};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Client, Method};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The world: datasets, tenants, ids, tokens, credentials, subscriptions.

/// Datasets a request may name: (path segment, raw name, kind).
const DATASETS: &[(&str, &str, DsKind)] = &[
    ("inventory", "inventory", DsKind::Declared),
    ("users", "users", DsKind::Declared),
    ("orders", "orders", DsKind::Undeclared),
    ("Inventory", "Inventory", DsKind::Invalid),
    ("%2A", "*", DsKind::Invalid),
    ("inventory%00", "inventory\u{0}", DsKind::Invalid),
    ("inv.entory", "inv.entory", DsKind::Invalid),
];
const DECLARED: &[&str] = &["inventory", "users"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DsKind {
    Declared,
    Undeclared,
    Invalid,
}

/// Tenants a request may name: (path segment, raw id, valid tenant id).
const TENANTS: &[(&str, &str, bool)] = &[
    ("acme", "acme", true),
    ("acme2", "acme2", true),
    ("acme-eu", "acme-eu", true),
    ("acme_eu", "acme_eu", true),
    ("globex", "globex", true),
    // Valid, never seeded.
    ("initech", "initech", true),
    (
        "acmeaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "acmeaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        true,
    ),
    // Look-alikes and garbage: never valid tenant ids.
    ("ACME", "ACME", false),
    ("acme.eu", "acme.eu", false),
    ("acm%C3%A9", "acmé", false),
    ("%D0%B0cme", "\u{430}cme", false),
    ("acme%00", "acme\u{0}", false),
    ("acme%20", "acme ", false),
    ("%2E%2E", "..", false),
    ("..", "..", false),
    ("%2A", "*", false),
    ("acme%2Facme2", "acme/acme2", false),
    (
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        false,
    ),
];
/// The tenants holding canaries: the first five of [`TENANTS`].
const SEEDED: usize = 5;

/// Canary ids per (dataset, tenant): the same ids in every tenant, plus one of the tenant's own.
/// `SACRIFICIAL` is the only one authorized writes may hit, so the others stay canaries all run
/// long (and any write that lands on them is a write without scope).
fn canary_ids(tenant: &str) -> [String; 4] {
    [
        "sku-1".to_owned(),
        "sku-2".to_owned(),
        format!("only-{tenant}"),
        SACRIFICIAL.to_owned(),
    ]
}
const SACRIFICIAL: &str = "sku-3";

/// Valid ids that are not canaries: look-alikes of canary ids included.
const OTHER_IDS: &[&str] = &[
    "SKU-1",
    "sku-1 ",
    "a/b",
    "ä€😀",
    "sku-1:acme",
    "only-acme2x",
];
/// Ids the API must refuse with 400.
const BAD_IDS: &[&str] = &["bad\u{0}id", "new\nline"];

fn canary(dataset: &str, tenant: &str, id: &str) -> String {
    format!("CANARY:{dataset}:{tenant}:{id}")
}

/// The tokens the test creates: (name, scopes). The first is made with the CLI.
const TOKENS: &[(&str, &[&str])] = &[
    ("admin", &["admin"]),
    ("admin-api", &["admin"]),
    ("r-inv-acme", &["read:inventory:acme"]),
    ("w-inv-acme", &["write:inventory:acme"]),
    (
        "rw-inv-acme",
        &["read:inventory:acme", "write:inventory:acme"],
    ),
    ("r-any-acme", &["read:*:acme"]),
    ("r-inv-all", &["read:inventory:*"]),
    ("w-any-globex", &["write:*:globex"]),
    ("rw-users-acme2", &["read:users:acme2", "write:users:acme2"]),
    ("r-all", &["read:*:*"]),
    ("w-all", &["write:*:*"]),
    (
        "mixed",
        &[
            "read:inventory:acme-eu",
            "write:users:acme_eu",
            "read:users:globex",
            "write:inventory:acme2",
        ],
    ),
    ("orders-only", &["read:orders:acme", "write:orders:*"]),
];
/// Created, then revoked before the run: it had every record scope.
const REVOKED: (&str, &[&str]) = ("revoked", &["read:*:*", "write:*:*"]);

/// Credentials that identify nobody.
#[derive(Debug, Clone, Copy)]
enum Bad {
    None,
    Garbage,
    UnknownToken,
    Revoked,
    BasicWithAdmin,
    TokenSchemeWithAdmin,
    BearerEmpty,
    AdminPlusChar,
    AdminTruncated,
    AdminUppercased,
    JwtLike,
}
const BAD: &[Bad] = &[
    Bad::None,
    Bad::Garbage,
    Bad::UnknownToken,
    Bad::Revoked,
    Bad::BasicWithAdmin,
    Bad::TokenSchemeWithAdmin,
    Bad::BearerEmpty,
    Bad::AdminPlusChar,
    Bad::AdminTruncated,
    Bad::AdminUppercased,
    Bad::JwtLike,
];

/// A subscription's tenants: a list, or `None` for "*".
type SubTenantIds = Option<&'static [&'static str]>;

/// The subscriptions the test creates: (name, datasets, tenants). Random requests never change
/// or delete them (they go to the scratch names instead).
const SUBSCRIPTIONS: &[(&str, &[&str], SubTenantIds)] = &[
    ("sub-acme", &["inventory", "users"], Some(&["acme"])),
    ("sub-inv-all", &["inventory"], None),
    ("sub-pair", &["users"], Some(&["acme2", "globex"])),
];
/// Names random requests may create and delete.
const SCRATCH_SUBS: &[&str] = &["scratch-a", "scratch-b"];
/// Every subscription name a request may use: test, scratch, never created, invalid.
const SUB_NAMES: &[&str] = &[
    "sub-acme",
    "sub-inv-all",
    "sub-pair",
    "scratch-a",
    "scratch-b",
    "ghost",
    "Sub%21",
];

// ---------------------------------------------------------------------------------------------
// The model of scopes.

#[derive(Debug, Clone)]
enum Scope {
    Admin,
    Records {
        write: bool,
        dataset: Option<String>,
        tenant: Option<String>,
    },
}

impl Scope {
    /// The test's own reading of the scope grammar, independent of `tenantsync-auth`.
    fn parse(s: &str) -> Scope {
        if s == "admin" {
            return Scope::Admin;
        }
        let parts: Vec<&str> = s.split(':').collect();
        let [access, dataset, tenant] = parts[..] else {
            panic!("the test's scope {s:?} is not access:dataset:tenant")
        };
        let any = |p: &str| (p != "*").then(|| p.to_owned());
        Scope::Records {
            write: access == "write",
            dataset: any(dataset),
            tenant: any(tenant),
        }
    }
}

/// What a credential may do; `None` scopes for credentials that identify nobody.
#[derive(Debug, Clone)]
struct Cred {
    label: String,
    header: Option<String>,
    scopes: Option<Vec<Scope>>,
}

impl Cred {
    fn valid(&self) -> bool {
        self.scopes.is_some()
    }

    fn scopes(&self) -> &[Scope] {
        self.scopes.as_deref().unwrap_or_default()
    }

    fn admin(&self) -> bool {
        self.scopes().iter().any(|s| matches!(s, Scope::Admin))
    }

    fn allows(&self, write: bool, dataset: &str, tenant: &str) -> bool {
        self.scopes().iter().any(|s| match s {
            Scope::Admin => true,
            Scope::Records {
                write: w,
                dataset: d,
                tenant: t,
            } => {
                *w == write
                    && d.as_deref().is_none_or(|d| d == dataset)
                    && t.as_deref().is_none_or(|t| t == tenant)
            }
        })
    }

    fn reads(&self, dataset: &str, tenant: &str) -> bool {
        self.allows(false, dataset, tenant)
    }

    fn writes(&self, dataset: &str, tenant: &str) -> bool {
        self.allows(true, dataset, tenant)
    }

    fn reads_every_tenant(&self, dataset: &str) -> bool {
        self.scopes().iter().any(|s| match s {
            Scope::Admin => true,
            Scope::Records {
                write,
                dataset: d,
                tenant,
            } => !*write && d.as_deref().is_none_or(|d| d == dataset) && tenant.is_none(),
        })
    }

    fn sees_dataset(&self, dataset: &str) -> bool {
        self.scopes().iter().any(|s| match s {
            Scope::Admin => true,
            Scope::Records { dataset: d, .. } => d.as_deref().is_none_or(|d| d == dataset),
        })
    }

    fn reads_subscription(&self, spec: &SubSpec) -> bool {
        spec.datasets.iter().all(|d| match &spec.tenants {
            None => self.reads_every_tenant(d),
            Some(ts) => ts.iter().all(|t| self.reads(d, t)),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SubSpec {
    datasets: Vec<String>,
    /// `None`: every tenant.
    tenants: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// Random requests.

/// One random request: a credential (index into the fixture's credentials) and a route.
#[derive(Debug, Clone)]
struct Call {
    cred: usize,
    /// Aim at what the credential's scopes name: without it, most requests of a narrow token
    /// would be refused.
    aim: bool,
    route: Route,
}

#[derive(Debug, Clone)]
enum Route {
    Health {
        ready: bool,
    },
    /// A path no route serves, or a route with a method it does not take.
    Unknown {
        method: usize,
        path: usize,
    },
    ListDatasets,
    ShowDataset {
        ds: usize,
    },
    Declare {
        ds: usize,
        partitions: u32,
    },
    GetRecord {
        ds: usize,
        tn: usize,
        id: IdChoice,
    },
    Write {
        op: Op,
        ds: usize,
        tn: usize,
        id: IdChoice,
        body: BodyChoice,
        wait: bool,
        key: Option<usize>,
        hit_canary: bool,
    },
    ChangeStatus {
        ds: usize,
        tn: usize,
        change: usize,
    },
    Bulk {
        ds: usize,
        lines: Vec<Line>,
        wait: bool,
    },
    Feed {
        ds: usize,
        tn: usize,
        cursor: Option<usize>,
        limit: Option<usize>,
        wait: Option<usize>,
        sse: bool,
        unknown_param: bool,
    },
    SubPut {
        name: usize,
        datasets: Vec<usize>,
        tenants: SubTenants,
    },
    SubGet {
        name: usize,
    },
    SubDelete {
        name: usize,
    },
    SubChanges {
        name: usize,
        cursor: Option<usize>,
        limit: Option<usize>,
    },
    SubAck {
        name: usize,
        cursor: usize,
        malformed: bool,
    },
    SubList,
    TokenCreate {
        name: Option<usize>,
        scopes: Vec<usize>,
    },
    TokenList,
    TokenRevoke {
        name: usize,
    },
    Audit {
        after: Option<usize>,
        limit: Option<usize>,
    },
    Erase {
        tn: usize,
    },
    ErasureStatus {
        tn: usize,
    },
    Metrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Upsert,
    Patch,
    Delete,
}

#[derive(Debug, Clone, Copy)]
enum IdChoice {
    /// One of the (dataset, tenant)'s canary ids.
    Canary(usize),
    /// A new id, never used before.
    Fresh,
    Other(usize),
    Bad(usize),
}

#[derive(Debug, Clone, Copy)]
enum BodyChoice {
    Object(u32),
    NotAnObject,
    NotJson,
}

#[derive(Debug, Clone)]
struct Line {
    op: Op,
    tn: usize,
    id: IdChoice,
    hit_canary: bool,
    shape: LineShape,
}

#[derive(Debug, Clone, Copy)]
enum LineShape {
    Good,
    /// Data on a delete, or none on an upsert.
    WrongData,
    UnknownField,
    NotJson,
}

#[derive(Debug, Clone)]
enum SubTenants {
    All,
    List(Vec<usize>),
    Empty,
    NotStar,
}

const UNKNOWN_PATHS: &[&str] = &[
    "/",
    "/v1/nope",
    "/v2/datasets",
    "/v1/datasets/inventory/tenants/acme",
    "/v1/datasets/inventory/tenants/acme/records/",
    "/v1/datasets/inventory/tenants/acme/records/sku-1/extra",
    "/v1/datasets/inventory/changes",
    "/v1/tokens/admin",
    "/v1/datasets",
    "/metrics",
];
const UNKNOWN_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];
const LIMITS: &[&str] = &["1", "2", "5", "1000", "0", "1001", "-1", "abc"];
const WAITS: &[&str] = &["0", "0.05", "-1", "x"];
const IDEMPOTENCY_KEYS: &[&str] = &["key-1", "key-2", "tenantsync:reserved"];
const TOKEN_SCOPES: &[&str] = &[
    "admin",
    "read:inventory:acme",
    "write:*:*",
    "read:*:acme2",
    "read:ACME:x",
    "superuser",
    "read:inventory",
    "read:inventory:acme:extra",
    "write:users:acme.eu",
];

fn index(n: usize) -> impl Strategy<Value = usize> {
    0..n
}

fn id_choice() -> impl Strategy<Value = IdChoice> {
    prop_oneof![
        5 => (0..4usize).prop_map(IdChoice::Canary),
        3 => Just(IdChoice::Fresh),
        2 => index(OTHER_IDS.len()).prop_map(IdChoice::Other),
        1 => index(BAD_IDS.len()).prop_map(IdChoice::Bad),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![3 => Just(Op::Upsert), 1 => Just(Op::Patch), 1 => Just(Op::Delete)]
}

/// Datasets, weighted towards the declared ones.
fn ds() -> impl Strategy<Value = usize> {
    prop_oneof![8 => 0..2usize, 2 => index(DATASETS.len())]
}

/// Tenants, weighted towards the seeded ones.
fn tn() -> impl Strategy<Value = usize> {
    prop_oneof![8 => 0..SEEDED, 3 => index(TENANTS.len())]
}

fn line() -> impl Strategy<Value = Line> {
    (
        op(),
        tn(),
        id_choice(),
        prop::bool::weighted(0.2),
        prop_oneof![
            12 => Just(LineShape::Good),
            1 => Just(LineShape::WrongData),
            1 => Just(LineShape::UnknownField),
            1 => Just(LineShape::NotJson),
        ],
    )
        .prop_map(|(op, tn, id, hit_canary, shape)| Line {
            op,
            tn,
            id,
            hit_canary,
            shape,
        })
}

fn route() -> impl Strategy<Value = Route> {
    let write = (
        op(),
        ds(),
        tn(),
        id_choice(),
        prop_oneof![
            8 => any::<u32>().prop_map(BodyChoice::Object),
            1 => Just(BodyChoice::NotAnObject),
            1 => Just(BodyChoice::NotJson),
        ],
        prop::bool::weighted(0.2),
        prop::option::weighted(0.15, index(IDEMPOTENCY_KEYS.len())),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(op, ds, tn, id, body, wait, key, hit_canary)| Route::Write {
                op,
                ds,
                tn,
                id,
                body,
                wait,
                key,
                hit_canary,
            },
        );
    let feed = (
        ds(),
        tn(),
        prop::option::weighted(0.6, any::<prop::sample::Index>()),
        prop::option::weighted(0.4, index(LIMITS.len())),
        prop::option::weighted(0.15, index(WAITS.len())),
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.03),
    )
        .prop_map(
            |(ds, tn, cursor, limit, wait, sse, unknown_param)| Route::Feed {
                ds,
                tn,
                cursor: cursor.map(|i| i.index(usize::MAX)),
                limit,
                wait,
                sse,
                unknown_param,
            },
        );
    let sub_put = (
        index(SUB_NAMES.len()),
        prop::collection::vec(ds(), 0..3),
        prop_oneof![
            3 => Just(SubTenants::All),
            6 => prop::collection::vec(tn(), 1..3).prop_map(SubTenants::List),
            1 => Just(SubTenants::Empty),
            1 => Just(SubTenants::NotStar),
        ],
    )
        .prop_map(|(name, datasets, tenants)| Route::SubPut {
            name,
            datasets,
            tenants,
        });
    prop_oneof![
        1 => any::<bool>().prop_map(|ready| Route::Health { ready }),
        2 => (index(UNKNOWN_METHODS.len()), index(UNKNOWN_PATHS.len()))
            .prop_map(|(method, path)| Route::Unknown { method, path }),
        2 => Just(Route::ListDatasets),
        2 => ds().prop_map(|ds| Route::ShowDataset { ds }),
        1 => (ds(), prop_oneof![Just(2u32), Just(3), Just(0), Just(100_000)])
            .prop_map(|(ds, partitions)| Route::Declare { ds, partitions }),
        12 => (ds(), tn(), id_choice()).prop_map(|(ds, tn, id)| Route::GetRecord { ds, tn, id }),
        14 => write,
        2 => (ds(), tn(), index(IDEMPOTENCY_KEYS.len() + 2))
            .prop_map(|(ds, tn, change)| Route::ChangeStatus { ds, tn, change }),
        6 => (ds(), prop::collection::vec(line(), 0..6), prop::bool::weighted(0.15))
            .prop_map(|(ds, lines, wait)| Route::Bulk { ds, lines, wait }),
        12 => feed,
        3 => sub_put,
        2 => index(SUB_NAMES.len()).prop_map(|name| Route::SubGet { name }),
        1 => index(SUB_NAMES.len()).prop_map(|name| Route::SubDelete { name }),
        4 => (
            index(SUB_NAMES.len()),
            prop::option::weighted(0.5, any::<prop::sample::Index>()),
            prop::option::weighted(0.3, index(LIMITS.len())),
        )
            .prop_map(|(name, cursor, limit)| Route::SubChanges {
                name,
                cursor: cursor.map(|i| i.index(usize::MAX)),
                limit,
            }),
        2 => (index(SUB_NAMES.len()), any::<prop::sample::Index>(), prop::bool::weighted(0.1))
            .prop_map(|(name, cursor, malformed)| Route::SubAck {
                name,
                cursor: cursor.index(usize::MAX),
                malformed,
            }),
        2 => Just(Route::SubList),
        2 => (
            prop::option::weighted(0.7, index(TOKENS.len() + 1)),
            prop::collection::vec(index(TOKEN_SCOPES.len()), 0..3),
        )
            .prop_map(|(name, scopes)| Route::TokenCreate { name, scopes }),
        1 => Just(Route::TokenList),
        1 => index(TOKENS.len() + 2).prop_map(|name| Route::TokenRevoke { name }),
        1 => (
            prop::option::weighted(0.5, 0..5usize),
            prop::option::weighted(0.5, 0..4usize),
        )
            .prop_map(|(after, limit)| Route::Audit { after, limit }),
        1 => tn().prop_map(|tn| Route::Erase { tn }),
        1 => tn().prop_map(|tn| Route::ErasureStatus { tn }),
        1 => Just(Route::Metrics),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    let tokens = TOKENS.len();
    (
        prop_oneof![3 => 0..tokens, 1 => tokens..tokens + BAD.len()],
        prop::bool::weighted(0.4),
        route(),
    )
        .prop_map(|(cred, aim, route)| Call { cred, aim, route })
}

/// The call with its datasets and tenants replaced by those of one of the credential's record
/// scopes (`*` keeps the call's own choice when it is a well-formed name).
fn aimed(cred: &Cred, call: &Call) -> Call {
    let scopes: Vec<(Option<&str>, Option<&str>)> = cred
        .scopes()
        .iter()
        .filter_map(|s| match s {
            Scope::Admin => None,
            Scope::Records {
                dataset, tenant, ..
            } => Some((dataset.as_deref(), tenant.as_deref())),
        })
        .collect();
    if !call.aim || scopes.is_empty() {
        return call.clone();
    }
    let pick = |ds: usize, tn: usize| {
        let (d, t) = scopes[(ds + tn) % scopes.len()];
        let ds = match d {
            Some(d) => DATASETS
                .iter()
                .position(|x| x.1 == d)
                .expect("a known dataset"),
            None if ds_at(ds).2 == DsKind::Invalid => 0,
            None => ds,
        };
        let tn = match t {
            Some(t) => TENANTS
                .iter()
                .position(|x| x.1 == t)
                .expect("a known tenant"),
            None if !tn_at(tn).2 => 0,
            None => tn,
        };
        (ds, tn)
    };
    let mut call = call.clone();
    match &mut call.route {
        Route::GetRecord { ds, tn, .. }
        | Route::Write { ds, tn, .. }
        | Route::ChangeStatus { ds, tn, .. }
        | Route::Feed { ds, tn, .. } => (*ds, *tn) = pick(*ds, *tn),
        Route::Bulk { ds, lines, .. } => {
            // The dataset of one scope, the tenants of any (some lines are then refused).
            if let Some(first) = lines.first() {
                *ds = pick(*ds, first.tn).0;
            }
            for line in lines.iter_mut() {
                line.tn = pick(*ds, line.tn).1;
            }
        }
        _ => {}
    }
    call
}

// ---------------------------------------------------------------------------------------------
// The fixture: one server, its tokens, cursors.

/// A cursor a request may carry, and what it was issued for.
#[derive(Debug, Clone)]
struct CursorChoice {
    value: String,
    origin: CursorOrigin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CursorOrigin {
    Feed {
        dataset: String,
        tenant: String,
    },
    Subscription(String),
    /// Edited or made up: refused wherever it is presented.
    Forged,
}

struct Fixture {
    server: Server,
    client: Client,
    creds: Vec<Cred>,
    admin: String,
    cursors: Vec<CursorChoice>,
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// Cursor number `n`: a third of the numbers pick one issued for `own` (when there is
    /// one), the others any cursor (mostly foreign or forged).
    fn cursor(&self, n: usize, own: &CursorOrigin) -> &CursorChoice {
        let owned: Vec<&CursorChoice> = self.cursors.iter().filter(|c| &c.origin == own).collect();
        if n.is_multiple_of(3) && !owned.is_empty() {
            return owned[n / 3 % owned.len()];
        }
        &self.cursors[n % self.cursors.len()]
    }

    fn admin_request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.admin)
    }
}

/// What the random requests changed, and what was counted.
#[derive(Default)]
struct Model {
    subs: BTreeMap<String, SubSpec>,
    /// Canary keys (dataset, tenant, id) an accepted write targeted.
    touched: HashSet<(String, String, String)>,
    /// Refused writes aimed at canaries (the first few per key), kept to explain a failure
    /// of the final check.
    refused_on_canaries: HashMap<(String, String, String), Vec<String>>,
    refused_canary_writes: u64,
    next_fresh: u64,
    requests: u64,
    by_status: BTreeMap<u16, u64>,
    by_route: BTreeMap<&'static str, u64>,
    /// Responses with a canary its credential may read: the checks are not vacuous.
    canaries_seen: u64,
    forbidden_checked: u64,
    unauthenticated_checked: u64,
    /// Reads of an untouched canary record, each checked to hold exactly its canary.
    canary_reads: u64,
    sse_streams: u64,
    sse_up_to_date: u64,
    bulk_lines: u64,
}

/// A token made through the API; returns its secret.
async fn api_token(client: &Client, url: &str, admin: &str, name: &str, scopes: &[&str]) -> String {
    let r = client
        .post(url)
        .bearer_auth(admin)
        .json(&json!({"name": name, "scopes": scopes}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "create token {name}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["name"], name);
    let token = body["token"].as_str().expect("the token").to_owned();
    assert!(token.starts_with("tsk_") && token.len() == 47, "{body}");
    token
}

/// Flips one character in the middle of a cursor: still base64url, no longer signed.
fn tamper(cursor: &str) -> String {
    let mut chars: Vec<char> = cursor.chars().collect();
    let i = chars.len() / 3;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

async fn setup(dir: &Path) -> Fixture {
    let server = Server::start_secure(dir, &["--tenant-write-rate", "1000000"]).await;
    let client = common::http_client();
    // The first admin token comes from the CLI, as an operator would make it.
    let data_dir = dir.to_owned();
    let admin =
        tokio::task::spawn_blocking(move || common::create_token(&data_dir, "admin", &["admin"]))
            .await
            .unwrap();
    assert!(admin.starts_with("tsk_") && admin.len() == 47, "{admin}");
    let mut fx = Fixture {
        server,
        client,
        creds: Vec::new(),
        admin: admin.clone(),
        cursors: Vec::new(),
    };

    for d in DECLARED {
        let r = fx
            .admin_request(Method::PUT, &format!("/v1/datasets/{d}"))
            .json(&json!({"partitions": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "declare {d}");
    }
    for d in DECLARED {
        for &(t, _, _) in &TENANTS[..SEEDED] {
            for id in canary_ids(t) {
                let r = fx
                    .admin_request(
                        Method::PUT,
                        &format!("/v1/datasets/{d}/tenants/{t}/records/{id}?wait=applied"),
                    )
                    .json(&json!({"canary": canary(d, t, &id)}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "seed {d}/{t}/{id}");
            }
        }
    }

    let tokens_url = fx.url("/v1/tokens");
    for (i, &(name, scopes)) in TOKENS.iter().enumerate() {
        let secret = if i == 0 {
            admin.clone()
        } else {
            api_token(&fx.client, &tokens_url, &admin, name, scopes).await
        };
        fx.creds.push(Cred {
            label: name.to_owned(),
            header: Some(format!("Bearer {secret}")),
            scopes: Some(scopes.iter().map(|s| Scope::parse(s)).collect()),
        });
    }
    let revoked = api_token(&fx.client, &tokens_url, &admin, REVOKED.0, REVOKED.1).await;
    let r = fx
        .admin_request(Method::DELETE, &format!("/v1/tokens/{}", REVOKED.0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "revoke");
    let unknown = format!("tsk_{}", "Q".repeat(21) + "-x_" + &"7".repeat(19));
    assert_eq!(unknown.len(), 47);
    for bad in BAD {
        let header = match bad {
            Bad::None => None,
            Bad::Garbage => Some("Bearer garbage".to_owned()),
            Bad::UnknownToken => Some(format!("Bearer {unknown}")),
            Bad::Revoked => Some(format!("Bearer {revoked}")),
            Bad::BasicWithAdmin => Some(format!("Basic {admin}")),
            Bad::TokenSchemeWithAdmin => Some(format!("Token {admin}")),
            Bad::BearerEmpty => Some("Bearer ".to_owned()),
            Bad::AdminPlusChar => Some(format!("Bearer {admin}x")),
            Bad::AdminTruncated => Some(format!("Bearer {}", &admin[..admin.len() - 1])),
            Bad::AdminUppercased => Some(format!("Bearer tsk_{}", admin[4..].to_uppercase())),
            Bad::JwtLike => Some(
                "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiIsInNjb3BlIjoiYWRtaW4ifQ.c2lnbmF0dXJl"
                    .to_owned(),
            ),
        };
        fx.creds.push(Cred {
            label: format!("{bad:?}"),
            header,
            scopes: None,
        });
    }

    for &(name, datasets, tenants) in SUBSCRIPTIONS {
        let tenants = tenants.map_or(json!("*"), |t| json!(t));
        let r = fx
            .admin_request(Method::PUT, &format!("/v1/subscriptions/{name}"))
            .json(&json!({"datasets": datasets, "tenants": tenants}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "subscription {name}");
    }

    // Genuine feed cursors: mid-snapshot and at the end, per seeded (dataset, tenant).
    for d in DECLARED {
        for &(t, _, _) in &TENANTS[..SEEDED] {
            for limit in [1, 1000] {
                let r = fx
                    .admin_request(
                        Method::GET,
                        &format!("/v1/datasets/{d}/tenants/{t}/changes?limit={limit}"),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let body: Value = r.json().await.unwrap();
                fx.cursors.push(CursorChoice {
                    value: body["cursor"].as_str().unwrap().to_owned(),
                    origin: CursorOrigin::Feed {
                        dataset: (*d).to_owned(),
                        tenant: t.to_owned(),
                    },
                });
            }
        }
    }
    // Genuine subscription batch cursors (not acknowledged).
    for &(name, _, _) in SUBSCRIPTIONS {
        for limit in [1, 2] {
            let r = fx
                .admin_request(
                    Method::GET,
                    &format!("/v1/subscriptions/{name}/changes?limit={limit}"),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "first batch of {name}");
            let body: Value = r.json().await.unwrap();
            fx.cursors.push(CursorChoice {
                value: body["cursor"].as_str().unwrap().to_owned(),
                origin: CursorOrigin::Subscription(name.to_owned()),
            });
        }
    }
    let forged: Vec<CursorChoice> = fx
        .cursors
        .iter()
        .map(|c| CursorChoice {
            value: tamper(&c.value),
            origin: CursorOrigin::Forged,
        })
        .chain(
            ["garbage", "", "a.b", &"A".repeat(2000)].map(|v| CursorChoice {
                value: v.to_owned(),
                origin: CursorOrigin::Forged,
            }),
        )
        .collect();
    fx.cursors.extend(forged);

    // The credentials behave as set up.
    for cred in &fx.creds {
        let mut request = fx.client.get(fx.url("/v1/datasets"));
        if let Some(h) = &cred.header {
            request = request.header(AUTHORIZATION, h);
        }
        let status = request.send().await.unwrap().status().as_u16();
        let expected = if cred.valid() { 200 } else { 401 };
        assert_eq!(status, expected, "GET /v1/datasets as {}", cred.label);
    }
    fx
}

// ---------------------------------------------------------------------------------------------
// Turning a call into a request, and the checks of its response.

/// What a request needs to be allowed, when everything it names is well-formed.
#[derive(Debug, Clone)]
enum Need {
    /// Open to all (the health checks).
    Open,
    /// Any valid credential.
    Authenticated,
    Admin,
    Read(String, String),
    Write(String, String),
    ReadOrWrite(String, String),
    SeesDataset(String),
    /// Reading everything an existing subscription covers (404 first when it does not exist).
    Subscription(String),
    /// PUT of a subscription: reading the new coverage, and the old one when it exists.
    SubscriptionPut(String, SubSpec),
    /// Something in the request is malformed: only the 401 and 5xx rules apply.
    Unchecked,
}

/// What to check in the response of an allowed request.
#[derive(Debug, Clone)]
enum Expect {
    Any,
    Status(Vec<u16>),
}

struct Plan {
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<String>,
    need: Need,
    expect: Expect,
    kind: Kind,
}

/// What the response check needs to know about the request beyond its need.
#[derive(Debug, Clone)]
enum Kind {
    Plain,
    ListDatasets,
    /// A read of a canary key no accepted write touched: 200 with exactly the canary.
    Canary(String),
    /// A write of (dataset, tenant, id); the id is a canary key when `canary`.
    Write {
        key: (String, String, String),
        canary: bool,
    },
    Bulk {
        dataset: String,
        lines: Vec<LinePlan>,
    },
    SubPut(String, SubSpec),
    SubDelete(String),
    SubList,
    TokenCreate,
    TokenList,
}

#[derive(Debug, Clone)]
struct LinePlan {
    tenant: String,
    tenant_valid: bool,
    id: String,
    well_formed: bool,
    canary: bool,
}

/// Percent-encodes a path segment.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn ds_at(i: usize) -> (&'static str, &'static str, DsKind) {
    DATASETS[i]
}

fn tn_at(i: usize) -> (&'static str, &'static str, bool) {
    TENANTS[i]
}

/// The raw id a choice stands for, and whether it is one of the tenant's canary ids. With
/// `spare_canaries` (a write the credential may make, but for its occasional writes of the
/// sacrificial canary) a canary choice becomes a fresh id, so that the other canaries stay in
/// place all run long.
fn resolve_id(
    model: &mut Model,
    choice: IdChoice,
    tenant: &str,
    spare_canaries: bool,
) -> (String, bool) {
    let mut fresh = || {
        model.next_fresh += 1;
        format!("w-{}", model.next_fresh)
    };
    match choice {
        IdChoice::Canary(i) => {
            if spare_canaries {
                (fresh(), false)
            } else {
                (canary_ids(tenant)[i].clone(), true)
            }
        }
        IdChoice::Fresh => (fresh(), false),
        IdChoice::Other(i) => (OTHER_IDS[i].to_owned(), false),
        IdChoice::Bad(i) => (BAD_IDS[i].to_owned(), false),
    }
}

fn id_valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= 512 && !id.chars().any(char::is_control)
}

fn is_canary_key(dataset: &str, tenant: &str, id: &str) -> bool {
    DECLARED.contains(&dataset)
        && TENANTS[..SEEDED].iter().any(|&(t, _, _)| t == tenant)
        && canary_ids(tenant).iter().any(|c| c == id)
}

fn plan(fx: &Fixture, model: &mut Model, call: &Call) -> Plan {
    let cred = &fx.creds[call.cred];
    let mut p = Plan {
        method: Method::GET,
        path: String::new(),
        headers: Vec::new(),
        body: None,
        need: Need::Unchecked,
        expect: Expect::Any,
        kind: Kind::Plain,
    };
    match &call.route {
        Route::Health { ready } => {
            p.path = if *ready { "/readyz" } else { "/healthz" }.to_owned();
            p.need = Need::Open;
            p.expect = Expect::Status(vec![200]);
        }
        Route::Unknown { method, path } => {
            let method = UNKNOWN_METHODS[*method];
            let path = UNKNOWN_PATHS[*path];
            // Only the combinations no route serves.
            let served = matches!(
                (method, path),
                ("GET", "/v1/datasets")
                    | ("GET", "/metrics")
                    | ("POST", "/v1/datasets/inventory/changes")
                    | ("DELETE", "/v1/tokens/admin")
            );
            let (method, path) = if served {
                ("POST", "/v1/nope")
            } else {
                (method, path)
            };
            p.method = method.parse().unwrap();
            p.path = path.to_owned();
            p.need = Need::Authenticated;
            p.expect = Expect::Status(vec![404, 405]);
        }
        Route::ListDatasets => {
            p.path = "/v1/datasets".to_owned();
            p.need = Need::Authenticated;
            p.expect = Expect::Status(vec![200]);
            p.kind = Kind::ListDatasets;
        }
        Route::ShowDataset { ds } => {
            let (seg, raw, kind) = ds_at(*ds);
            p.path = format!("/v1/datasets/{seg}");
            match kind {
                DsKind::Invalid => p.expect = Expect::Status(vec![400]),
                DsKind::Undeclared => {
                    p.need = Need::SeesDataset(raw.to_owned());
                    p.expect = Expect::Status(vec![404]);
                }
                DsKind::Declared => {
                    p.need = Need::SeesDataset(raw.to_owned());
                    p.expect = Expect::Status(vec![200]);
                }
            }
        }
        Route::Declare { ds, partitions } => {
            let (mut seg, _, mut kind) = ds_at(*ds);
            // Admins do not declare new datasets: the undeclared one stays undeclared.
            if kind == DsKind::Undeclared && cred.admin() {
                (seg, kind) = ("inventory", DsKind::Declared);
            }
            p.method = Method::PUT;
            p.path = format!("/v1/datasets/{seg}");
            p.body = Some(json!({"partitions": partitions}).to_string());
            p.need = Need::Admin;
            p.expect = match (kind, partitions) {
                (DsKind::Invalid, _) => Expect::Status(vec![400]),
                (_, 2) => Expect::Status(vec![200]),
                (_, 3) => Expect::Status(vec![409]),
                _ => Expect::Status(vec![400]),
            };
        }
        Route::GetRecord { ds, tn, id } => {
            let (dseg, draw, dkind) = ds_at(*ds);
            let (tseg, traw, tvalid) = tn_at(*tn);
            let (id, is_canary) = resolve_id(model, *id, traw, false);
            p.path = format!("/v1/datasets/{dseg}/tenants/{tseg}/records/{}", enc(&id));
            if dkind != DsKind::Invalid && tvalid {
                p.need = Need::Read(draw.to_owned(), traw.to_owned());
                p.expect = match dkind {
                    DsKind::Undeclared => Expect::Status(vec![404]),
                    _ if !id_valid(&id) => Expect::Status(vec![400]),
                    _ => Expect::Status(vec![200, 404]),
                };
                let key = (draw.to_owned(), traw.to_owned(), id.clone());
                if is_canary && is_canary_key(draw, traw, &id) && !model.touched.contains(&key) {
                    p.kind = Kind::Canary(canary(draw, traw, &id));
                    p.expect = Expect::Status(vec![200]);
                }
            }
        }
        Route::Write {
            op,
            ds,
            tn,
            id,
            body,
            wait,
            key,
            hit_canary,
        } => {
            let (dseg, draw, dkind) = ds_at(*ds);
            let (tseg, traw, tvalid) = tn_at(*tn);
            let authorized = dkind != DsKind::Invalid && cred.writes(draw, traw);
            let sacrificial = *hit_canary && matches!(id, IdChoice::Canary(3));
            let (id, canary) = resolve_id(model, *id, traw, authorized && !sacrificial);
            p.method = match op {
                Op::Upsert => Method::PUT,
                Op::Patch => Method::PATCH,
                Op::Delete => Method::DELETE,
            };
            p.path = format!(
                "/v1/datasets/{dseg}/tenants/{tseg}/records/{}{}",
                enc(&id),
                if *wait { "?wait=applied" } else { "" }
            );
            let body_ok = match (op, body) {
                (Op::Delete, _) => true,
                (_, BodyChoice::Object(v)) => {
                    p.body = Some(json!({"v": v, "note": "written"}).to_string());
                    true
                }
                (_, BodyChoice::NotAnObject) => {
                    p.body = Some("[1, 2]".to_owned());
                    false
                }
                (_, BodyChoice::NotJson) => {
                    p.body = Some("{\"v\": ".to_owned());
                    false
                }
            };
            if let Some(k) = key {
                p.headers
                    .push(("Idempotency-Key", IDEMPOTENCY_KEYS[*k].to_owned()));
            }
            p.kind = Kind::Write {
                key: (draw.to_owned(), traw.to_owned(), id.clone()),
                canary,
            };
            if dkind != DsKind::Invalid && tvalid {
                p.need = Need::Write(draw.to_owned(), traw.to_owned());
                let simple = body_ok && id_valid(&id) && key.is_none();
                p.expect = match (dkind, op, *wait) {
                    (DsKind::Undeclared, _, _) => Expect::Status(vec![404]),
                    _ if !id_valid(&id) || !body_ok => Expect::Status(vec![400]),
                    (_, Op::Upsert, false) if simple => Expect::Status(vec![202]),
                    (_, Op::Upsert, true) if simple => Expect::Status(vec![200]),
                    _ => Expect::Status(vec![200, 202, 400, 404, 409, 422]),
                };
            }
        }
        Route::ChangeStatus { ds, tn, change } => {
            let (dseg, draw, dkind) = ds_at(*ds);
            let (tseg, traw, tvalid) = tn_at(*tn);
            let change = match change.checked_sub(IDEMPOTENCY_KEYS.len()) {
                None => IDEMPOTENCY_KEYS[*change].to_owned(),
                Some(0) => "0190b5d2-7d3a-7c4e-8f00-000000000000".to_owned(),
                Some(_) => "bad\u{1}change".to_owned(),
            };
            p.path = format!(
                "/v1/datasets/{dseg}/tenants/{tseg}/changes/{}",
                enc(&change)
            );
            if dkind != DsKind::Invalid && tvalid {
                p.need = Need::ReadOrWrite(draw.to_owned(), traw.to_owned());
                p.expect = match dkind {
                    DsKind::Undeclared => Expect::Status(vec![404]),
                    _ => Expect::Status(vec![200, 400]),
                };
            }
        }
        Route::Bulk { ds, lines, wait } => {
            let (dseg, draw, dkind) = ds_at(*ds);
            p.method = Method::POST;
            p.path = format!(
                "/v1/datasets/{dseg}/changes{}",
                if *wait { "?wait=applied" } else { "" }
            );
            let mut body = String::new();
            let mut plans = Vec::new();
            for line in lines {
                let (_, traw, tvalid) = tn_at(line.tn);
                let authorized = dkind != DsKind::Invalid && cred.writes(draw, traw);
                let sacrificial = line.hit_canary && matches!(line.id, IdChoice::Canary(3));
                let (id, canary) = resolve_id(model, line.id, traw, authorized && !sacrificial);
                let op = match line.op {
                    Op::Upsert => "upsert",
                    Op::Patch => "patch",
                    Op::Delete => "delete",
                };
                let data = match line.op {
                    Op::Delete => Value::Null,
                    _ => json!({"v": plans.len(), "note": "bulk"}),
                };
                let (text, shape_ok) = match line.shape {
                    LineShape::Good => (
                        json!({"op": op, "tenant": traw, "id": id, "data": data}).to_string(),
                        true,
                    ),
                    LineShape::WrongData => {
                        let data = match line.op {
                            Op::Delete => json!({"v": 1}),
                            _ => json!([1]),
                        };
                        (
                            json!({"op": op, "tenant": traw, "id": id, "data": data}).to_string(),
                            false,
                        )
                    }
                    LineShape::UnknownField => (
                        json!({"op": op, "tenant": traw, "id": id, "data": data, "tenant_override": "globex"})
                            .to_string(),
                        false,
                    ),
                    LineShape::NotJson => (format!("{{\"op\": \"{op}\", \"tenant\": {traw:?}"), false),
                };
                body.push_str(&text);
                body.push('\n');
                plans.push(LinePlan {
                    tenant: traw.to_owned(),
                    tenant_valid: tvalid,
                    well_formed: shape_ok && tvalid && id_valid(&id),
                    id,
                    canary,
                });
            }
            p.body = Some(body);
            if dkind != DsKind::Invalid {
                p.need = Need::SeesDataset(draw.to_owned());
                p.expect = match dkind {
                    DsKind::Undeclared => Expect::Status(vec![404]),
                    _ => Expect::Status(vec![200]),
                };
            }
            p.kind = Kind::Bulk {
                dataset: draw.to_owned(),
                lines: plans,
            };
        }
        Route::Feed {
            ds,
            tn,
            cursor,
            limit,
            wait,
            sse,
            unknown_param,
        } => {
            let (dseg, draw, dkind) = ds_at(*ds);
            let (tseg, traw, tvalid) = tn_at(*tn);
            let mut query = Vec::new();
            let mut bad = false;
            if let Some(c) = cursor {
                let own = CursorOrigin::Feed {
                    dataset: draw.to_owned(),
                    tenant: traw.to_owned(),
                };
                let c = fx.cursor(*c, &own);
                query.push(format!("cursor={}", enc(&c.value)));
                bad |= c.origin != own;
            }
            if let Some(l) = limit {
                query.push(format!("limit={}", LIMITS[*l]));
                bad |= *l >= 4;
            }
            if let Some(w) = wait {
                query.push(format!("wait={}", WAITS[*w]));
                // Not a number: refused by the query parser; negative: refused, SSE included.
                bad |= *w == 3 || *w == 2;
            }
            if *unknown_param {
                query.push("tenant=globex".to_owned());
                bad = true;
            }
            p.path = format!("/v1/datasets/{dseg}/tenants/{tseg}/changes");
            if !query.is_empty() {
                p.path = format!("{}?{}", p.path, query.join("&"));
            }
            if *sse {
                p.headers.push(("Accept", "text/event-stream".to_owned()));
            }
            if dkind != DsKind::Invalid && tvalid {
                p.need = Need::Read(draw.to_owned(), traw.to_owned());
                p.expect = match dkind {
                    DsKind::Undeclared => Expect::Status(vec![404]),
                    _ if bad => Expect::Status(vec![400]),
                    _ => Expect::Status(vec![200]),
                };
            }
        }
        Route::SubPut {
            name,
            datasets,
            tenants,
        } => {
            let mut name = SUB_NAMES[*name];
            let ds: Vec<&str> = datasets.iter().map(|&d| ds_at(d).1).collect();
            let mut valid = !ds.is_empty()
                && datasets.iter().all(|&d| ds_at(d).2 != DsKind::Invalid)
                && name != "Sub%21";
            let (tenants_json, spec_tenants) = match tenants {
                SubTenants::All => (json!("*"), None),
                SubTenants::List(list) => {
                    valid &= list.iter().all(|&t| tn_at(t).2);
                    let raw: Vec<&str> = list.iter().map(|&t| tn_at(t).1).collect();
                    let mut sorted: Vec<String> = raw.iter().map(|s| (*s).to_owned()).collect();
                    sorted.sort();
                    sorted.dedup();
                    (json!(raw), Some(sorted))
                }
                SubTenants::Empty => {
                    valid = false;
                    (json!([]), Some(Vec::new()))
                }
                SubTenants::NotStar => {
                    valid = false;
                    (json!("all"), None)
                }
            };
            let mut sorted_ds: Vec<String> = ds.iter().map(|s| (*s).to_owned()).collect();
            sorted_ds.sort();
            sorted_ds.dedup();
            let spec = SubSpec {
                datasets: sorted_ds,
                tenants: spec_tenants,
            };
            let protected = !SCRATCH_SUBS.contains(&name) && name != "Sub%21";
            if valid && protected && may_put_subscription(model, cred, name, &spec) {
                name = SCRATCH_SUBS[call.cred % SCRATCH_SUBS.len()];
            }
            p.method = Method::PUT;
            p.path = format!("/v1/subscriptions/{name}");
            p.body = Some(json!({"datasets": ds, "tenants": tenants_json}).to_string());
            if valid {
                let undeclared = spec
                    .datasets
                    .iter()
                    .any(|d| !DECLARED.contains(&d.as_str()));
                p.expect = if undeclared {
                    Expect::Status(vec![404])
                } else if model.subs.contains_key(name) {
                    Expect::Status(vec![200])
                } else {
                    Expect::Status(vec![201])
                };
                p.need = Need::SubscriptionPut(name.to_owned(), spec.clone());
                p.kind = Kind::SubPut(name.to_owned(), spec);
            }
        }
        Route::SubGet { name } => {
            let name = SUB_NAMES[*name];
            p.path = format!("/v1/subscriptions/{name}");
            if name != "Sub%21" {
                p.need = Need::Subscription(name.to_owned());
                p.expect = Expect::Status(vec![200]);
            }
        }
        Route::SubDelete { name } => {
            let mut name = SUB_NAMES[*name];
            let allowed = model
                .subs
                .get(name)
                .is_some_and(|s| cred.reads_subscription(s));
            if allowed && !SCRATCH_SUBS.contains(&name) {
                name = SCRATCH_SUBS[call.cred % SCRATCH_SUBS.len()];
            }
            p.method = Method::DELETE;
            p.path = format!("/v1/subscriptions/{name}");
            if name != "Sub%21" {
                p.need = Need::Subscription(name.to_owned());
                p.expect = Expect::Status(vec![204]);
                p.kind = Kind::SubDelete(name.to_owned());
            }
        }
        Route::SubChanges {
            name,
            cursor,
            limit,
        } => {
            let name = SUB_NAMES[*name];
            let mut query = Vec::new();
            let mut bad = false;
            if let Some(c) = cursor {
                let own = CursorOrigin::Subscription(name.to_owned());
                let c = fx.cursor(*c, &own);
                query.push(format!("cursor={}", enc(&c.value)));
                bad |= c.origin != own;
            }
            if let Some(l) = limit {
                query.push(format!("limit={}", LIMITS[*l]));
                bad |= *l >= 4;
            }
            p.path = format!("/v1/subscriptions/{name}/changes");
            if !query.is_empty() {
                p.path = format!("{}?{}", p.path, query.join("&"));
            }
            if name != "Sub%21" {
                p.need = Need::Subscription(name.to_owned());
                // A scratch subscription may be a new one of the same name as a cursor's.
                let scratch = SCRATCH_SUBS.contains(&name);
                p.expect = if bad {
                    Expect::Status(vec![400])
                } else if scratch {
                    Expect::Status(vec![200, 204, 400])
                } else {
                    Expect::Status(vec![200, 204])
                };
            }
        }
        Route::SubAck {
            name,
            cursor,
            malformed,
        } => {
            let name = SUB_NAMES[*name];
            let c = fx.cursor(*cursor, &CursorOrigin::Subscription(name.to_owned()));
            p.method = Method::POST;
            p.path = format!("/v1/subscriptions/{name}/ack");
            p.body = Some(if *malformed {
                json!({"cursor": c.value, "position": 0}).to_string()
            } else {
                json!({"cursor": c.value}).to_string()
            });
            if name != "Sub%21" {
                p.need = Need::Subscription(name.to_owned());
                let own = c.origin == CursorOrigin::Subscription(name.to_owned());
                p.expect = if *malformed || !own {
                    Expect::Status(vec![400])
                } else if SCRATCH_SUBS.contains(&name) {
                    Expect::Status(vec![204, 400])
                } else {
                    Expect::Status(vec![204])
                };
            }
        }
        Route::SubList => {
            p.path = "/v1/subscriptions".to_owned();
            p.need = Need::Authenticated;
            p.expect = Expect::Status(vec![200]);
            p.kind = Kind::SubList;
        }
        Route::TokenCreate { name, scopes } => {
            let (name, exists) = match name {
                Some(i) if *i < TOKENS.len() => (TOKENS[*i].0.to_owned(), true),
                Some(_) => ("Bad Name".to_owned(), false),
                None => {
                    model.next_fresh += 1;
                    (format!("rnd-{}", model.next_fresh), false)
                }
            };
            let scopes: Vec<&str> = scopes.iter().map(|&s| TOKEN_SCOPES[s]).collect();
            let scopes_ok = !scopes.is_empty()
                && scopes.iter().all(|s| {
                    ["admin", "read:inventory:acme", "write:*:*", "read:*:acme2"].contains(s)
                });
            p.method = Method::POST;
            p.path = "/v1/tokens".to_owned();
            p.body = Some(json!({"name": name, "scopes": scopes}).to_string());
            p.need = Need::Admin;
            p.expect = if name == "Bad Name" || !scopes_ok {
                Expect::Status(vec![400])
            } else if exists {
                Expect::Status(vec![409])
            } else {
                Expect::Status(vec![201])
            };
            p.kind = Kind::TokenCreate;
        }
        Route::TokenList => {
            p.path = "/v1/tokens".to_owned();
            p.need = Need::Admin;
            p.expect = Expect::Status(vec![200]);
            p.kind = Kind::TokenList;
        }
        Route::TokenRevoke { name } => {
            let name = match TOKENS.get(*name) {
                // The test's own tokens are never revoked: an admin asks for a missing one.
                Some(_) if cred.admin() => "nobody",
                Some((n, _)) => n,
                None if *name == TOKENS.len() => "nobody",
                None => "Bad%20Name",
            };
            p.method = Method::DELETE;
            p.path = format!("/v1/tokens/{name}");
            p.need = Need::Admin;
            p.expect = if name == "nobody" {
                Expect::Status(vec![404])
            } else {
                Expect::Status(vec![400])
            };
        }
        Route::Audit { after, limit } => {
            let mut query = Vec::new();
            let mut bad = false;
            if let Some(a) = after {
                let v = ["0", "3", "99999", "-1", "x"][*a];
                query.push(format!("after={v}"));
                bad |= *a >= 3;
            }
            if let Some(l) = limit {
                let v = ["1", "1000", "0", "1001"][*l];
                query.push(format!("limit={v}"));
                bad |= *l >= 2;
            }
            p.path = format!("/v1/audit?{}", query.join("&"));
            p.need = Need::Admin;
            p.expect = Expect::Status(vec![if bad { 400 } else { 200 }]);
        }
        Route::Erase { tn } => {
            let (tseg, _, _) = tn_at(*tn);
            if cred.admin() {
                // Never erase: an admin would wipe the canaries.
                p.path = format!("/v1/tenants/{tseg}/erasure");
            } else {
                p.method = Method::DELETE;
                p.path = format!("/v1/tenants/{tseg}");
            }
            p.need = admin_unless_dots(tseg);
        }
        Route::ErasureStatus { tn } => {
            let (tseg, _, _) = tn_at(*tn);
            p.path = format!("/v1/tenants/{tseg}/erasure");
            p.need = admin_unless_dots(tseg);
        }
        Route::Metrics => {
            p.path = "/metrics".to_owned();
            p.need = Need::Admin;
            p.expect = Expect::Status(vec![200]);
        }
    }
    p
}

/// `Admin`, unless the segment is a dot-segment: URLs drop those (with the segment before), so
/// the request goes to a path no route serves.
fn admin_unless_dots(segment: &str) -> Need {
    if segment == ".." || segment.eq_ignore_ascii_case("%2E%2E") {
        Need::Authenticated
    } else {
        Need::Admin
    }
}

fn may_put_subscription(model: &Model, cred: &Cred, name: &str, spec: &SubSpec) -> bool {
    cred.reads_subscription(spec)
        && model
            .subs
            .get(name)
            .is_none_or(|old| cred.reads_subscription(old))
}

/// Whether the model allows the need; `None` when the need decides nothing.
fn allowed(model: &Model, cred: &Cred, need: &Need) -> Option<bool> {
    Some(match need {
        Need::Open | Need::Unchecked => return None,
        Need::Authenticated => true,
        Need::Admin => cred.admin(),
        Need::Read(d, t) => cred.reads(d, t),
        Need::Write(d, t) => cred.writes(d, t),
        Need::ReadOrWrite(d, t) => cred.reads(d, t) || cred.writes(d, t),
        Need::SeesDataset(d) => cred.sees_dataset(d),
        Need::Subscription(name) => match model.subs.get(name) {
            // 404 comes first; checked by the caller.
            None => return None,
            Some(spec) => cred.reads_subscription(spec),
        },
        Need::SubscriptionPut(name, spec) => may_put_subscription(model, cred, name, spec),
    })
}

/// Reads a body: whole, or for an event stream up to its `up-to-date` event or 2 s. The flag
/// is `Some(whether the up-to-date event came)` for an event stream.
async fn read_body(response: &mut reqwest::Response) -> Result<(Vec<u8>, Option<bool>), String> {
    let sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut body = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(if sse { 2 } else { 20 });
    loop {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_) if sse => return Ok((body, Some(false))),
            Err(_) => return Err("the body did not arrive within 20 s".to_owned()),
            Ok(Err(e)) => return Err(format!("reading the body: {e}")),
            Ok(Ok(None)) => return Ok((body, sse.then_some(false))),
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
        }
        if sse && contains(&body, b"event: up-to-date") {
            return Ok((body, Some(true)));
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every (dataset, tenant) of a canary in the body.
fn canaries_in(body: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (i, _) in body.match_indices("CANARY:") {
        let rest = &body[i + "CANARY:".len()..];
        let mut parts = rest.splitn(3, ':');
        if let (Some(d), Some(t), Some(_)) = (parts.next(), parts.next(), parts.next()) {
            found.push((d.to_owned(), t.to_owned()));
        }
    }
    found
}

/// Sends one call and checks its response; updates the model.
async fn run_call(fx: &Fixture, model: &mut Model, call: &Call) -> Result<(), TestCaseError> {
    let cred = &fx.creds[call.cred];
    let call = &aimed(cred, call);
    let p = plan(fx, model, call);
    let mut request = fx.client.request(p.method.clone(), fx.url(&p.path));
    if let Some(h) = &cred.header {
        request = request.header(AUTHORIZATION, h);
    }
    for (name, value) in &p.headers {
        request = request.header(*name, value);
    }
    if let Some(body) = &p.body {
        request = request
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone());
    }
    let what = format!(
        "{} {} as {} ({:?})",
        p.method, p.path, cred.label, call.route
    );
    let mut response = request
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let (body, reached_up_to_date) = read_body(&mut response)
        .await
        .map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let what = format!("{what} -> {status}: {}", truncate(&text, 600));

    model.requests += 1;
    *model.by_status.entry(status).or_default() += 1;
    *model.by_route.entry(route_name(&call.route)).or_default() += 1;
    model.sse_streams += u64::from(reached_up_to_date.is_some());
    model.sse_up_to_date += u64::from(reached_up_to_date == Some(true));

    // 1. Never a 5xx.
    prop_assert!(status < 500, "a 5xx: {}", what);

    // 3. No canary the credential may not read, whatever the status.
    for (d, t) in canaries_in(&text) {
        prop_assert!(
            cred.reads(&d, &t),
            "leaked a canary of {}:{} the credential may not read: {}",
            d,
            t,
            what
        );
        model.canaries_seen += 1;
    }

    // 2. An invalid credential gets 401 everywhere but the health checks.
    if matches!(p.need, Need::Open) {
        prop_assert!(status == 200, "a health check: {}", what);
        return Ok(());
    }
    if !cred.valid() {
        prop_assert!(
            status == 401,
            "an invalid credential was not refused: {}",
            what
        );
        check_unauthenticated(&headers, &what)?;
        model.unauthenticated_checked += 1;
        if let Kind::Write { key, canary: true } = &p.kind {
            note_refused(model, key, &what);
        }
        if let Kind::Bulk { dataset, lines } = &p.kind {
            for l in lines.iter().filter(|l| l.canary) {
                note_refused(
                    model,
                    &(dataset.clone(), l.tenant.clone(), l.id.clone()),
                    &what,
                );
            }
        }
        return Ok(());
    }
    prop_assert!(status != 401, "a valid credential got 401: {}", what);

    // 4. Without the scope a well-formed request needs: exactly 403. With it: never 403.
    let subscription_missing = match &p.need {
        Need::Subscription(name) => !model.subs.contains_key(name),
        _ => false,
    };
    if subscription_missing {
        prop_assert!(status == 404, "a missing subscription: {}", what);
    } else {
        match allowed(model, cred, &p.need) {
            Some(false) => {
                prop_assert!(
                    status == 403,
                    "not refused with 403 without the scope: {}",
                    what
                );
                model.forbidden_checked += 1;
            }
            Some(true) => {
                prop_assert!(
                    status != 403,
                    "refused with 403 despite the scope: {}",
                    what
                );
                if let Expect::Status(ok) = &p.expect {
                    prop_assert!(ok.contains(&status), "expected one of {:?}: {}", ok, what);
                }
            }
            None => {
                if let Expect::Status(ok) = &p.expect {
                    prop_assert!(
                        ok.contains(&status) || status == 403,
                        "expected one of {:?}: {}",
                        ok,
                        what
                    );
                }
            }
        }
    }
    // A write that succeeded had the scope.
    if let Kind::Write { key, canary } = &p.kind {
        if (200..300).contains(&status) {
            prop_assert!(
                cred.writes(&key.0, &key.1),
                "a write without the write scope succeeded: {}",
                what
            );
            if *canary {
                model.touched.insert(key.clone());
            }
        } else if *canary {
            note_refused(model, key, &what);
        }
    }
    check_kind(fx, model, cred, &p, status, &text, &what)
}

fn note_refused(model: &mut Model, key: &(String, String, String), what: &str) {
    model.refused_canary_writes += 1;
    let notes = model.refused_on_canaries.entry(key.clone()).or_default();
    if notes.len() < 5 {
        notes.push(truncate(what, 300));
    }
}

fn check_unauthenticated(headers: &HeaderMap, what: &str) -> Result<(), TestCaseError> {
    let challenge = headers
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    prop_assert!(
        challenge.starts_with("Bearer"),
        "401 without a Bearer challenge: {}",
        what
    );
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    prop_assert!(
        content_type.starts_with("application/problem+json"),
        "401 not as problem+json: {}",
        what
    );
    Ok(())
}

/// The checks particular to a route's response.
fn check_kind(
    fx: &Fixture,
    model: &mut Model,
    cred: &Cred,
    p: &Plan,
    status: u16,
    text: &str,
    what: &str,
) -> Result<(), TestCaseError> {
    let json = || -> Result<Value, TestCaseError> {
        serde_json::from_str(text).map_err(|e| TestCaseError::fail(format!("{what}: {e}")))
    };
    match &p.kind {
        Kind::Plain | Kind::Write { .. } => {}
        Kind::ListDatasets => {
            let body = json()?;
            let listed: BTreeSet<&str> = body["datasets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["name"].as_str())
                .collect();
            let expected: BTreeSet<&str> = DECLARED
                .iter()
                .copied()
                .filter(|d| cred.sees_dataset(d))
                .collect();
            prop_assert_eq!(listed, expected, "{}", what);
        }
        Kind::Canary(expected) if status == 200 => {
            model.canary_reads += 1;
            let body = json()?;
            prop_assert_eq!(
                &body["data"],
                &json!({"canary": expected}),
                "a canary record changed: {}",
                what
            );
        }
        Kind::Canary(_) => {}
        Kind::Bulk { dataset, lines } if status == 200 => {
            let body = json()?;
            let results = body["results"].as_array().cloned().unwrap_or_default();
            prop_assert_eq!(results.len(), lines.len(), "one result per line: {}", what);
            for (n, (result, line)) in results.iter().zip(lines).enumerate() {
                model.bulk_lines += 1;
                prop_assert_eq!(&result["line"], &json!(n + 1), "{}", what);
                let line_status = result["status"].as_u64().unwrap_or(0);
                prop_assert!(line_status < 500, "a 5xx line {}: {}", n + 1, what);
                let writes = cred.writes(dataset, &line.tenant);
                if (200..300).contains(&line_status) {
                    prop_assert!(
                        writes && line.tenant_valid,
                        "line {} of a tenant the credential may not write was accepted: {}",
                        n + 1,
                        what
                    );
                    if line.canary {
                        model.touched.insert((
                            dataset.clone(),
                            line.tenant.clone(),
                            line.id.clone(),
                        ));
                    }
                } else {
                    if line.canary {
                        note_refused(
                            model,
                            &(dataset.clone(), line.tenant.clone(), line.id.clone()),
                            what,
                        );
                    }
                    if line.tenant_valid && !writes {
                        if line.well_formed {
                            prop_assert_eq!(line_status, 403, "line {}: {}", n + 1, what);
                            model.forbidden_checked += 1;
                        } else {
                            prop_assert!(
                                line_status == 400 || line_status == 403,
                                "line {}: {}",
                                n + 1,
                                what
                            );
                        }
                    }
                    if line.well_formed && writes {
                        prop_assert!(
                            [200, 202, 404, 409, 422].contains(&line_status),
                            "line {} refused despite the scope: {}",
                            n + 1,
                            what
                        );
                    }
                }
            }
        }
        Kind::Bulk { dataset, lines } => {
            for line in lines.iter().filter(|l| l.canary) {
                note_refused(
                    model,
                    &(dataset.clone(), line.tenant.clone(), line.id.clone()),
                    what,
                );
            }
        }
        Kind::SubPut(name, spec) => {
            if (200..300).contains(&status) {
                model.subs.insert(name.clone(), spec.clone());
            }
        }
        Kind::SubDelete(name) => {
            if status == 204 {
                model.subs.remove(name);
            }
        }
        Kind::SubList => {
            let body = json()?;
            let listed: BTreeSet<String> = body["subscriptions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect();
            let expected: BTreeSet<String> = model
                .subs
                .iter()
                .filter(|(_, s)| cred.reads_subscription(s))
                .map(|(n, _)| n.clone())
                .collect();
            prop_assert_eq!(listed, expected, "{}", what);
        }
        Kind::TokenCreate => {
            if status == 201 {
                let body = json()?;
                let token = body["token"].as_str().unwrap_or_default();
                prop_assert!(token.starts_with("tsk_") && token.len() == 47, "{}", what);
            }
        }
        Kind::TokenList => {
            if status == 200 {
                prop_assert!(
                    !text.contains("tsk_"),
                    "a token list shows secrets: {}",
                    what
                );
                prop_assert!(!text.contains(&fx.admin[4..]), "{}", what);
            }
        }
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn route_name(route: &Route) -> &'static str {
    match route {
        Route::Health { .. } => "health",
        Route::Unknown { .. } => "unknown",
        Route::ListDatasets => "list datasets",
        Route::ShowDataset { .. } => "show dataset",
        Route::Declare { .. } => "declare",
        Route::GetRecord { .. } => "get record",
        Route::Write { .. } => "write",
        Route::ChangeStatus { .. } => "change status",
        Route::Bulk { .. } => "bulk",
        Route::Feed { sse: true, .. } => "feed (sse)",
        Route::Feed { .. } => "feed",
        Route::SubPut { .. } => "subscription put",
        Route::SubGet { .. } => "subscription get",
        Route::SubDelete { .. } => "subscription delete",
        Route::SubChanges { .. } => "subscription changes",
        Route::SubAck { .. } => "subscription ack",
        Route::SubList => "subscription list",
        Route::TokenCreate { .. } => "token create",
        Route::TokenList => "token list",
        Route::TokenRevoke { .. } => "token revoke",
        Route::Audit { .. } => "audit",
        Route::Erase { .. } => "erase",
        Route::ErasureStatus { .. } => "erasure status",
        Route::Metrics => "metrics",
    }
}

/// 5. Every canary no accepted write targeted still holds its canary data.
async fn check_canaries(fx: &Fixture, model: &Model) -> usize {
    for d in DECLARED {
        common::wait_caught_up_as(&fx.server, d, Some(&fx.admin)).await;
    }
    let mut intact = 0;
    for d in DECLARED {
        for &(t, _, _) in &TENANTS[..SEEDED] {
            for id in canary_ids(t) {
                let key = ((*d).to_owned(), t.to_owned(), id.clone());
                if model.touched.contains(&key) {
                    continue;
                }
                let r = fx
                    .admin_request(
                        Method::GET,
                        &format!("/v1/datasets/{d}/tenants/{t}/records/{}", enc(&id)),
                    )
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let body: Value = r.json().await.unwrap_or_default();
                assert!(
                    status == 200 && body["data"] == json!({"canary": canary(d, t, &id)}),
                    "canary {d}/{t}/{id} changed without an accepted write ({status}: {body}); \
                     refused writes aimed at it: {:#?}",
                    model.refused_on_canaries.get(&key)
                );
                intact += 1;
            }
        }
    }
    intact
}

#[test]
fn random_requests_never_cross_scopes() {
    let total = env_or("TENANTSYNC_SECURITY_REQUESTS", 10_000).max(1);
    let cases: u32 = 50;
    let per_case = total.div_ceil(u64::from(cases)) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let fx = rt.block_on(setup(dir.path()));
    let mut model = Model::default();
    for &(name, datasets, tenants) in SUBSCRIPTIONS {
        model.subs.insert(
            name.to_owned(),
            SubSpec {
                datasets: datasets.iter().map(|d| (*d).to_owned()).collect(),
                tenants: tenants.map(|t| t.iter().map(|t| (*t).to_owned()).collect()),
            },
        );
    }
    let setup_time = started.elapsed();
    let model = std::sync::Mutex::new(model);

    let config = ProptestConfig {
        cases,
        max_shrink_iters: 64,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(call(), per_case), |calls| {
        let mut model = model.lock().unwrap();
        rt.block_on(async {
            for call in &calls {
                run_call(&fx, &mut model, call).await?;
            }
            Ok(())
        })
    });
    let model = model.into_inner().unwrap();
    if let Err(e) = result {
        panic!("{e}");
    }
    let intact = rt.block_on(check_canaries(&fx, &model));

    // The test's tokens still work: random requests revoked none of them.
    rt.block_on(async {
        for cred in fx.creds.iter().filter(|c| c.valid()) {
            let status = fx
                .client
                .get(fx.url("/v1/datasets"))
                .header(AUTHORIZATION, cred.header.as_deref().unwrap())
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200, "token {} stopped working", cred.label);
        }
    });

    let elapsed = started.elapsed();
    println!(
        "security: {} random requests in {:.1} s (setup {:.1} s), {} bulk lines",
        model.requests,
        elapsed.as_secs_f64(),
        setup_time.as_secs_f64(),
        model.bulk_lines
    );
    println!("  by status: {:?}", model.by_status);
    println!("  by route: {:?}", model.by_route);
    println!(
        "  403 checks {}, 401 checks {}, readable canaries seen {}, SSE streams {} ({} read up to date)",
        model.forbidden_checked,
        model.unauthenticated_checked,
        model.canaries_seen,
        model.sse_streams,
        model.sse_up_to_date
    );
    println!(
        "  canaries intact {intact}, touched by accepted writes {}, refused writes aimed at canaries {}",
        model.touched.len(),
        model.refused_canary_writes
    );
    println!(
        "  untouched canary records read back during the run {}",
        model.canary_reads
    );
    // The checks were exercised, not passed vacuously.
    assert!(model.canaries_seen > 0 && model.forbidden_checked > 0 && intact > 0);
}
