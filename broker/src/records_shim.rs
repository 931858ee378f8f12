//! TEMPORARY until records land. Not committed.
use kakehashi_interfaces::OrgId;
pub struct RecordDraft {
    pub query_id: String,
    pub permit_id: Option<String>,
    pub flow_id: Option<String>,
    pub flow_list_version: Option<u64>,
    pub procedure: Option<String>,
    pub requester: OrgId,
    pub provider: Option<OrgId>,
    pub items: Vec<String>,
    pub requester_person_code: Option<String>,
    pub provider_person_code: Option<String>,
    pub outcome: Outcome,
    pub approver: Option<String>,
}
pub enum Outcome {
    Provided,
    Pending,
    Expired,
    Denied { reason: String },
}
impl crate::state::AppState {
    pub async fn record(&self, _d: RecordDraft) -> Result<u64, crate::BrokerError> {
        Ok(0)
    }
    pub async fn disclosure(
        &self,
        _o: &OrgId,
        _c: &str,
    ) -> Result<Vec<String>, crate::BrokerError> {
        Ok(vec![])
    }
}
