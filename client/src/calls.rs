//! Typed calls beyond `whoami`: flows, permit keys, queries, persons, copies.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kakehashi_interfaces::envelope::{self, EnvelopeContext, ReplyKeyPair};
use kakehashi_interfaces::people::UserId;
use kakehashi_interfaces::permit::PermitError;
use kakehashi_interfaces::{
    CopyDeposit, DepositReport, ErrorCode, FlowId, FlowListView, ItemCode, ItemValue, OrgId,
    PermitKeySet, PersonCode, PersonRegistration, ProcedureCode, QueryId, QueryRequest,
    QueryResponse, QueryStatus, RegistrationReport, RejectionReason, SignedPermit, WhoAmI,
};
use time::OffsetDateTime;

use crate::client::{safe_json_error, Client};
use crate::error::ClientError;
use crate::pending::KeptQuery;
use crate::transport::Call;

/// Longest long-poll one `GET /v1/queries/{id}?wait=` may ask for; the broker
/// caps it at this value.
pub const MAX_WAIT_PER_REQUEST: Duration = Duration::from_secs(30);

/// The keys one query is made with: its `Idempotency-Key` and the reply key
/// pair its answer is sealed to, and the person it is asked as.
pub struct QueryKeys {
    /// The `Idempotency-Key` header.
    pub idempotency_key: String,
    /// The reply key pair.
    pub reply: ReplyKeyPair,
    /// `requested_by` of the request (`KAKEHASHI_USER`), read when the keys
    /// are made: the request carries exactly the value derived keys were
    /// derived from.
    requested_by: Option<UserId>,
    /// Derived, so a rerun sends the same request and may be answered with
    /// the reply made the first time: its permit is then checked as of when
    /// it was issued, if that was lately (it may have expired since; it is
    /// still bound to this reply key, which only this request uses).
    repeatable: bool,
}

impl QueryKeys {
    /// Random keys: a query of its own, safe to retry within this call.
    /// Asked as `KAKEHASHI_USER`, if set.
    pub fn fresh() -> QueryKeys {
        let mut key = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        QueryKeys {
            idempotency_key: hex::encode(key),
            reply: ReplyKeyPair::generate(),
            requested_by: requested_by(),
            repeatable: false,
        }
    }

    /// Keys derived from a secret and a context (e.g. a batch line), asked
    /// as `KAKEHASHI_USER` if set: the same inputs and user give the same
    /// keys, so a rerun repeats the request.
    ///
    /// The user is part of the derivation because it is part of the
    /// request body: a rerun by another person sent under the same
    /// `Idempotency-Key` would be a different request, which the broker
    /// refuses (409 `conflict`). Without a user the derivation is the
    /// `query keys v1` one with no user in it, so the keys of a batch run
    /// without `KAKEHASHI_USER` stay the same from release to release and
    /// its rerun reads back its answers.
    pub fn derived(secret: &[u8], context: &[u8]) -> QueryKeys {
        Self::derived_as(secret, context, requested_by())
    }

    fn derived_as(secret: &[u8], context: &[u8], user: Option<UserId>) -> QueryKeys {
        use sha2::{Digest, Sha256};
        let part = |label: &[u8]| {
            let mut h = Sha256::new();
            match &user {
                None => h.update(b"kakehashi-client query keys v1\0"),
                // Another tag, so that no context without a user can give
                // the bytes of one with a user.
                Some(_) => h.update(b"kakehashi-client query keys v1 by user\0"),
            }
            h.update(label);
            h.update((secret.len() as u64).to_be_bytes());
            h.update(secret);
            if let Some(user) = &user {
                h.update((user.as_str().len() as u64).to_be_bytes());
                h.update(user.as_str());
            }
            h.update(context);
            h.finalize()
        };
        QueryKeys {
            idempotency_key: hex::encode(&part(b"idempotency-key\0")[..16]),
            reply: ReplyKeyPair::derive(&part(b"reply-key\0")),
            requested_by: user,
            repeatable: true,
        }
    }

    /// The person the query is asked as (`requested_by`), if any.
    pub fn requested_by(&self) -> Option<&UserId> {
        self.requested_by.as_ref()
    }
}

/// Per-client caches.
#[derive(Default)]
pub(crate) struct Caches {
    permit_keys: tokio::sync::RwLock<Option<PermitKeySet>>,
    whoami: tokio::sync::OnceCell<WhoAmI>,
    /// Where the checkpoints answers carry are kept, if anywhere.
    pub(crate) checkpoints: std::sync::OnceLock<std::sync::Arc<crate::witness::CheckpointBook>>,
}

/// What to ask one provider about one person. The reply key is made by
/// [`Client::query`] itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The flow (row of the flow list) the query is made under.
    pub flow_id: FlowId,
    /// The procedure it serves.
    pub procedure: ProcedureCode,
    /// The org asked.
    pub provider: OrgId,
    /// The person, by this org's own code.
    pub person: PersonCode,
    /// The items asked for (1–64, no duplicates).
    pub items: Vec<ItemCode>,
}

impl Query {
    /// Builds a query from text, validating every field.
    pub fn parse(
        flow_id: &str,
        procedure: &str,
        provider: &str,
        person: &str,
        items: &[impl AsRef<str>],
    ) -> Result<Query, ClientError> {
        Ok(Query {
            flow_id: FlowId::new(flow_id)?,
            procedure: ProcedureCode::new(procedure)?,
            provider: OrgId::new(provider)?,
            person: PersonCode::new(person)?,
            items: items
                .iter()
                .map(|i| ItemCode::new(i.as_ref()))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// An opened answer. Holds personal data: its `Debug` output hides the values.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The broker's id of the query.
    pub query_id: QueryId,
    /// The verified provision permit.
    pub permit: SignedPermit,
    /// The flow the answer was given under.
    pub flow_id: FlowId,
    /// The org whose data this is.
    pub provider: OrgId,
    /// The values the provider holds for the permitted items.
    pub items: BTreeMap<ItemCode, ItemValue>,
    /// Items asked for and permitted that the provider holds no value for.
    pub missing: Vec<ItemCode>,
}

/// A query waiting for an operator of the provider to approve (R11). Holds
/// the query's private reply key in memory until the answer is opened or
/// this value is dropped; [`crate::PendingStore::save`] keeps it on disk so
/// that another process can open the answer ([`Client::resume`]).
#[derive(Debug)]
pub struct PendingQuery {
    /// The broker's id of the query.
    pub query_id: QueryId,
    /// The permit issued for it.
    pub permit: SignedPermit,
    /// When the broker will give up waiting and delete it.
    pub expires_at: OffsetDateTime,
    pub(crate) query: Query,
    pub(crate) keys: ReplyKeyPair,
    pub(crate) requester: OrgId,
}

impl PendingQuery {
    /// The query as asked.
    pub fn query(&self) -> &Query {
        &self.query
    }
}

/// How a query ended (so far).
#[derive(Debug)]
pub enum QueryOutcome {
    /// Answered; the envelope was opened and the permit verified.
    Provided(Answer),
    /// Waiting for approval; pass it to [`Client::wait`].
    Pending(PendingQuery),
    /// An operator of the provider refused to release the answer.
    Rejected {
        /// The query.
        query_id: QueryId,
        /// The operator's reason, as the broker gave it.
        reason: Option<RejectionReason>,
    },
    /// The query was not approved in time, or its result passed its
    /// retention time, and the broker deleted it.
    Expired {
        /// The query.
        query_id: QueryId,
    },
}

impl QueryOutcome {
    /// The wire status of this outcome.
    pub fn status(&self) -> QueryStatus {
        match self {
            QueryOutcome::Provided(_) => QueryStatus::Provided,
            QueryOutcome::Pending(_) => QueryStatus::Pending,
            QueryOutcome::Rejected { .. } => QueryStatus::Rejected,
            QueryOutcome::Expired { .. } => QueryStatus::Expired,
        }
    }

    /// The broker's id of the query.
    pub fn query_id(&self) -> &QueryId {
        match self {
            QueryOutcome::Provided(a) => &a.query_id,
            QueryOutcome::Pending(p) => &p.query_id,
            QueryOutcome::Rejected { query_id, .. } | QueryOutcome::Expired { query_id } => {
                query_id
            }
        }
    }
}

/// When the permit must be valid: now for a fresh answer; when it was issued
/// for one released later (approval may come after the permit's own expiry);
/// when it was issued, if that was at most [`READ_BACK_AGE`] ago, for an
/// answer a rerun may read back under the same keys.
#[derive(Clone, Copy)]
enum PermitTime {
    Now,
    Issued,
    IssuedLately,
}

impl PermitTime {
    /// The instant a permit issued at `issued` must be valid at, `now`.
    fn instant(self, issued: OffsetDateTime, now: OffsetDateTime) -> OffsetDateTime {
        match self {
            PermitTime::Now => now,
            PermitTime::Issued => issued,
            PermitTime::IssuedLately if now - issued <= READ_BACK_AGE => issued,
            PermitTime::IssuedLately => now,
        }
    }
}

/// How old a permit read back under repeatable keys may be: as long as the
/// broker keeps an idempotency key by default (the pending period, 7 days,
/// then the result period, 24 h: a sensitive answer approved on the last
/// day is still read back), and a day of clock skew. An older answer under
/// the same keys (a results path used again a month later) is not taken
/// for a current one.
const READ_BACK_AGE: time::Duration = time::Duration::days(9);

impl Client {
    /// `GET /v1/flows`: the flows this org takes part in, as requester or provider.
    ///
    /// ```no_run
    /// # async fn run(client: kakehashi_client::Client) -> Result<(), kakehashi_client::ClientError> {
    /// for flow in client.flows().await?.flows {
    ///     println!("{} {} {:?}", flow.flow_id, flow.procedure, flow.items);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn flows(&self) -> Result<FlowListView, ClientError> {
        self.get_json("/v1/flows").await
    }

    /// `GET /v1/permit-keys`, fetched now; also refreshes the cache the
    /// permit checks of [`Client::query`] use.
    pub async fn permit_keys(&self) -> Result<PermitKeySet, ClientError> {
        let keys: PermitKeySet = self.get_json("/v1/permit-keys").await?;
        *self.inner.caches.permit_keys.write().await = Some(keys.clone());
        Ok(keys)
    }

    async fn cached_permit_keys(&self) -> Result<PermitKeySet, ClientError> {
        if let Some(keys) = self.inner.caches.permit_keys.read().await.as_ref() {
            return Ok(keys.clone());
        }
        self.permit_keys().await
    }

    /// This org, as the broker identifies it (fetched once per client).
    pub async fn me(&self) -> Result<&WhoAmI, ClientError> {
        self.inner
            .caches
            .whoami
            .get_or_try_init(|| self.whoami())
            .await
    }

    /// `POST /v1/queries`: asks one provider for items about one person.
    ///
    /// Makes a fresh X25519 key pair for this query, sends its public half,
    /// verifies the returned permit against the broker's published keys, and
    /// opens the sealed answer. The private key lives in memory: it is
    /// wiped once the answer is opened, or kept in the returned
    /// [`PendingQuery`] while approval is awaited (and on disk only if the
    /// caller keeps it with [`crate::PendingStore::save`]).
    ///
    /// Not retried after a broken connection (a query is recorded by the
    /// broker); retried after 429/503, which change nothing.
    ///
    /// ```no_run
    /// # async fn run(client: kakehashi_client::Client) -> Result<(), kakehashi_client::ClientError> {
    /// use std::time::Duration;
    /// use kakehashi_client::{Query, QueryOutcome};
    ///
    /// let query = Query::parse(
    ///     "row-80", "premium.assessment", "city-kawagoe", "U1234567890", &["local_tax.income"],
    /// )?;
    /// let mut outcome = client.query(&query).await?;
    /// if let QueryOutcome::Pending(pending) = outcome {
    ///     outcome = client.wait(pending, Duration::from_secs(120)).await?;
    /// }
    /// if let QueryOutcome::Provided(answer) = outcome {
    ///     for (item, value) in &answer.items {
    ///         println!("{item} = {}", value.to_json());
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn query(&self, query: &Query) -> Result<QueryOutcome, ClientError> {
        self.query_keyed(query, QueryKeys::fresh()).await
    }

    /// [`Client::query`] with given keys: the same keys and query give the
    /// same request, which the broker answers with the same query (no
    /// second provision record) while its result lives. A batch uses keys
    /// derived from the line, so a rerun after an interruption gets back an
    /// answer whose response was lost.
    pub async fn query_keyed(
        &self,
        query: &Query,
        keys: QueryKeys,
    ) -> Result<QueryOutcome, ClientError> {
        let requester = self.me().await?.org_id.clone();
        let QueryKeys {
            idempotency_key,
            reply: keys,
            requested_by,
            repeatable,
        } = keys;
        let request = QueryRequest {
            flow_id: query.flow_id.clone(),
            procedure: query.procedure.clone(),
            provider: query.provider.clone(),
            person: query.person.clone(),
            items: query.items.clone(),
            reply_key: keys.public(),
            requested_by,
        };
        request.validate()?;
        let body = serde_json::to_vec(&request).map_err(|e| ClientError::Protocol {
            status: None,
            message: format!("cannot encode the request: {}", safe_json_error(&e)),
        })?;
        let call = Call::post("/v1/queries", Bytes::from(body), "application/json")
            .with_idempotency_key(idempotency_key);
        let response: QueryResponse = self.send_json(call).await?;
        let when = if repeatable {
            PermitTime::IssuedLately
        } else {
            PermitTime::Now
        };
        self.settle(response, query.clone(), keys, requester, when)
            .await
    }

    /// `GET /v1/queries/{id}?wait=N`: the raw state of a query, long-polling up
    /// to `wait` (at most 30 s) while it is pending. The envelope, if any, is
    /// not opened; use [`Client::wait`] for that.
    pub async fn get_query(
        &self,
        query_id: &QueryId,
        wait: Duration,
    ) -> Result<QueryResponse, ClientError> {
        let wait = wait.min(MAX_WAIT_PER_REQUEST);
        let mut call = Call::get(format!("/v1/queries/{query_id}?wait={}", wait.as_secs()));
        call.extra_time = wait;
        let response: QueryResponse = self.send_json(call).await?;
        self.observe_checkpoint(response.checkpoint.as_ref());
        Ok(response)
    }

    /// Waits up to `max` for a pending query to be decided, then opens the
    /// answer. Returns the query still pending if `max` passes first, and
    /// [`QueryOutcome::Expired`] when the broker answers `expired` (410).
    /// A `max` beyond what the clock can count (e.g. [`Duration::MAX`])
    /// waits until the query is decided or expires.
    pub async fn wait(
        &self,
        pending: PendingQuery,
        max: Duration,
    ) -> Result<QueryOutcome, ClientError> {
        let Some(response) = self.poll(&pending.query_id, max).await? else {
            return Ok(QueryOutcome::Expired {
                query_id: pending.query_id,
            });
        };
        let PendingQuery {
            query,
            keys,
            requester,
            ..
        } = pending;
        self.settle(response, query, keys, requester, PermitTime::Issued)
            .await
    }

    /// Asks for a query whose reply key was kept in a
    /// [`crate::PendingStore`] (by this process or an earlier one), waiting
    /// up to `max` while it is pending, and opens the answer exactly as
    /// [`Client::wait`] does: the permit is verified against the broker's
    /// keys, the query as asked and the kept key.
    ///
    /// Refuses (without asking the broker) a query that was asked as
    /// another org than this client's certificate names. The kept file is
    /// not touched; wipe it with [`crate::PendingStore::wipe`] once the
    /// outcome is not `Pending`.
    ///
    /// ```no_run
    /// # async fn run(client: kakehashi_client::Client, store: kakehashi_client::PendingStore)
    /// # -> Result<(), kakehashi_client::ClientError> {
    /// use std::time::Duration;
    /// use kakehashi_client::QueryOutcome;
    ///
    /// for entry in store.scan()?.entries {
    ///     let Some(kept) = store.open_entry(&entry.query_id)? else { continue };
    ///     match client.resume(kept, Duration::ZERO).await? {
    ///         QueryOutcome::Pending(_) => {}
    ///         QueryOutcome::Provided(answer) => {
    ///             println!("{:?}", answer.items.keys());
    ///             store.wipe(&entry.query_id)?;
    ///         }
    ///         _ => {
    ///             store.wipe(&entry.query_id)?;
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn resume(
        &self,
        kept: KeptQuery,
        max: Duration,
    ) -> Result<QueryOutcome, ClientError> {
        let me = self.me().await?.org_id.clone();
        if me != kept.entry.requester {
            return Err(ClientError::config(format!(
                "query {} was asked as {}, but this profile's certificate is {me}; use the profile that asked",
                kept.entry.query_id, kept.entry.requester
            )));
        }
        let query_id = kept.entry.query_id.clone();
        let Some(response) = self.poll(&query_id, max).await? else {
            return Ok(QueryOutcome::Expired { query_id });
        };
        let query = kept.query();
        let KeptQuery { keys, entry, .. } = kept;
        self.settle(response, query, keys, entry.requester, PermitTime::Issued)
            .await
    }

    /// Long-polls a query until it is no longer pending or `max` passed;
    /// `None` when the broker says it expired (410 `expired`).
    async fn poll(
        &self,
        query_id: &QueryId,
        max: Duration,
    ) -> Result<Option<QueryResponse>, ClientError> {
        // `max` may come straight from a user (`--wait`): a deadline past
        // what the clock can hold means none, not a panic.
        let deadline = tokio::time::Instant::now().checked_add(max);
        loop {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(tokio::time::Instant::now()),
                None => MAX_WAIT_PER_REQUEST,
            };
            let response = match self.get_query(query_id, left).await {
                Ok(r) => r,
                Err(ClientError::Refused {
                    code: ErrorCode::Expired,
                    ..
                }) => return Ok(None),
                Err(e) => return Err(e),
            };
            if &response.query_id != query_id {
                return Err(ClientError::Protocol {
                    status: None,
                    message: format!("asked for query {query_id}, got another"),
                });
            }
            if response.status != QueryStatus::Pending || left.is_zero() {
                return Ok(Some(response));
            }
        }
    }

    async fn settle(
        &self,
        response: QueryResponse,
        query: Query,
        keys: ReplyKeyPair,
        requester: OrgId,
        when: PermitTime,
    ) -> Result<QueryOutcome, ClientError> {
        self.observe_checkpoint(response.checkpoint.as_ref());
        let query_id = response.query_id.clone();
        match response.status {
            QueryStatus::Rejected => {
                return Ok(QueryOutcome::Rejected {
                    query_id,
                    reason: response.reason,
                })
            }
            QueryStatus::Expired => return Ok(QueryOutcome::Expired { query_id }),
            QueryStatus::Pending | QueryStatus::Provided => {}
        }
        self.check_permit(&response.permit, &query, &keys, &requester, when)
            .await?;
        let envelope = match (response.status, response.envelope) {
            (QueryStatus::Provided, Some(envelope)) => envelope,
            _ => {
                return Ok(QueryOutcome::Pending(PendingQuery {
                    query_id,
                    permit: response.permit,
                    expires_at: response.expires_at,
                    query,
                    keys,
                    requester,
                }))
            }
        };
        let context = EnvelopeContext {
            query_id: query_id.clone(),
            requester,
            provider: query.provider.clone(),
        };
        let payload = envelope::open_answer(&keys, &context, &envelope).map_err(|e| {
            ClientError::Envelope {
                query_id: query_id.to_string(),
                message: e.to_string(),
            }
        })?;
        // The key pair is dropped (and wiped) here: the answer is open.
        drop(keys);
        let permitted = &response.permit.claims.items;
        if let Some(extra) = payload.items.keys().find(|i| !permitted.contains(i)) {
            return Err(ClientError::Envelope {
                query_id: query_id.to_string(),
                message: format!("the answer holds item {extra}, which the permit does not cover"),
            });
        }
        let missing = permitted
            .iter()
            .filter(|i| !payload.items.contains_key(*i))
            .cloned()
            .collect();
        Ok(QueryOutcome::Provided(Answer {
            query_id,
            permit: response.permit,
            flow_id: payload.flow_id,
            provider: payload.provider,
            items: payload.items,
            missing,
        }))
    }

    /// Checks that the permit is the broker's, for this query and reply key.
    async fn check_permit(
        &self,
        permit: &SignedPermit,
        query: &Query,
        keys: &ReplyKeyPair,
        requester: &OrgId,
        when: PermitTime,
    ) -> Result<(), ClientError> {
        let fail = |message: String| ClientError::Permit {
            query_id: permit.claims.query_id.to_string(),
            message,
        };
        let c = &permit.claims;
        if &c.requester != requester {
            return Err(fail(format!("issued to {}, not to this org", c.requester)));
        }
        if c.provider != query.provider
            || c.flow_id != query.flow_id
            || c.procedure != query.procedure
        {
            return Err(fail(
                "names another provider, flow or procedure than asked".into(),
            ));
        }
        if c.requester_person_code != query.person {
            return Err(fail("names another person than asked".into()));
        }
        if let Some(item) = c.items.iter().find(|i| !query.items.contains(i)) {
            return Err(fail(format!("grants item {item}, which was not asked for")));
        }
        let now = when.instant(c.issued_at, OffsetDateTime::now_utc());
        let set = self.cached_permit_keys().await?;
        match permit.verify_for(&set, &keys.public(), now) {
            Ok(()) => Ok(()),
            // The broker may have rotated its key since the cache was filled.
            Err(PermitError::UnknownKeyId) => {
                let fresh = self.permit_keys().await?;
                permit
                    .verify_for(&fresh, &keys.public(), now)
                    .map_err(|e| fail(e.to_string()))
            }
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// `POST /v1/persons`: registers insured persons (union), or links this
    /// org's records to persons an insurer registered. Line numbers in the
    /// report are 1-based positions in `persons`.
    ///
    /// Not retried after a broken connection; sending the same batch again
    /// is harmless (an already registered person is updated, not duplicated).
    pub async fn register_persons(
        &self,
        persons: &[PersonRegistration],
    ) -> Result<RegistrationReport, ClientError> {
        let body = jsonl(persons)?;
        self.send_json(Call::post("/v1/persons", body, "application/x-ndjson"))
            .await
    }

    /// `POST /v1/copies`: deposits copies of this org's items. Line numbers in
    /// the report are 1-based positions in `copies`. Good lines apply, bad
    /// lines are reported and store nothing.
    pub async fn deposit_copies(
        &self,
        copies: &[CopyDeposit],
    ) -> Result<DepositReport, ClientError> {
        let body = jsonl(copies)?;
        self.send_json(Call::post("/v1/copies", body, "application/x-ndjson"))
            .await
    }
}

impl Client {
    /// `GET /v1/persons/{code}/records` (union only, R18): who received which
    /// data about one insured person, and when, oldest first.
    ///
    /// Entries carry no person code of any org.
    pub async fn person_records(
        &self,
        person: &PersonCode,
    ) -> Result<Vec<kakehashi_interfaces::audit::DisclosureEntry>, ClientError> {
        self.get_json(&format!("/v1/persons/{person}/records"))
            .await
    }
}

/// Encodes values as JSON Lines.
fn jsonl<T: serde::Serialize>(values: &[T]) -> Result<Bytes, ClientError> {
    let mut out = Vec::with_capacity(values.len() * 128);
    for v in values {
        serde_json::to_writer(&mut out, v).map_err(|e| ClientError::Protocol {
            status: None,
            message: format!("cannot encode a line: {}", safe_json_error(&e)),
        })?;
        out.push(b'\n');
    }
    Ok(Bytes::from(out))
}

/// The person at the terminal, from `KAKEHASHI_USER` (their console user
/// id): sent with each query so that, where the requester org is also the
/// provider, that person cannot approve their own query (R11). Unset or not
/// a valid user id: nothing is sent.
fn requested_by() -> Option<UserId> {
    let user = std::env::var("KAKEHASHI_USER").ok()?;
    UserId::new(user).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permit_read_back_is_checked_as_issued_only_if_issued_lately() {
        let now = time::macros::datetime!(2026-12-07 12:00 UTC);
        let hour_ago = now - time::Duration::hours(1);
        let month_ago = now - time::Duration::days(30);
        assert_eq!(PermitTime::IssuedLately.instant(hour_ago, now), hour_ago);
        assert_eq!(PermitTime::IssuedLately.instant(month_ago, now), now);
        assert_eq!(PermitTime::Now.instant(hour_ago, now), now);
        // Released after approval: as issued, however long it waited.
        assert_eq!(PermitTime::Issued.instant(month_ago, now), month_ago);
    }

    #[test]
    fn derived_keys_depend_on_the_user_and_are_unchanged_without_one() {
        let user = |u: &str| UserId::new(u).ok();
        let a = QueryKeys::derived_as(b"secret", b"line 2", user("kawada.op"));
        let b = QueryKeys::derived_as(b"secret", b"line 2", user("ueda.op"));
        let again = QueryKeys::derived_as(b"secret", b"line 2", user("kawada.op"));
        let none = QueryKeys::derived_as(b"secret", b"line 2", None);
        assert_eq!(a.idempotency_key, again.idempotency_key);
        assert_eq!(a.reply.public(), again.reply.public());
        assert_ne!(a.idempotency_key, b.idempotency_key);
        assert_ne!(a.idempotency_key, none.idempotency_key);
        assert_ne!(a.reply.public(), b.reply.public());
        assert_eq!(a.requested_by(), user("kawada.op").as_ref());
        assert_eq!(none.requested_by(), None);
        // Without a user, the `query keys v1` derivation with no user in it.
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"kakehashi-client query keys v1\0idempotency-key\0");
        h.update(6u64.to_be_bytes());
        h.update(b"secretline 2");
        assert_eq!(none.idempotency_key, hex::encode(&h.finalize()[..16]));
    }
}
