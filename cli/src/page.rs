//! List commands page through the whole result: stopping at the server's
//! page size would silently show part of it.

use devcycle::proto::auth::v1 as auth;
use devcycle::proto::messages::v1 as messages;
use devcycle::proto::registry::v1 as registry;
use devcycle::proto::scheduler::v1 as scheduler;

/// The largest page asked for; servers may return fewer.
const PAGE: usize = 1000;

/// A list call's response: one page of items and the next page's token.
pub trait Page {
    type Item;
    fn split(self) -> (Vec<Self::Item>, String);
}

macro_rules! pages {
    ($($response:ty => $field:ident: $item:ty),* $(,)?) => {$(
        impl Page for $response {
            type Item = $item;
            fn split(self) -> (Vec<$item>, String) {
                (self.$field, self.next_page_token)
            }
        }
    )*};
}

pages! {
    registry::ListAgentsResponse => agents: registry::Agent,
    registry::ListVersionsResponse => versions: registry::AgentVersion,
    registry::ListDeploymentsResponse => deployments: registry::Deployment,
    registry::FindAgentsResponse => matches: registry::AgentMatch,
    registry::ListWorkersResponse => workers: registry::Worker,
    scheduler::ListWorkflowsResponse => workflows: scheduler::Workflow,
    scheduler::ListRunsResponse => runs: scheduler::Run,
    scheduler::ListTasksResponse => tasks: scheduler::Task,
    scheduler::ListDeadLettersResponse => dead_letters: scheduler::DeadLetter,
    scheduler::ListSchedulesResponse => schedules: scheduler::Schedule,
    messages::ListTopicsResponse => topics: messages::Topic,
    messages::ListDeadLettersResponse => dead_letters: messages::DeadLetter,
    messages::ListTriggersResponse => triggers: messages::Trigger,
    auth::ListUsersResponse => users: auth::User,
    auth::ListAuditEventsResponse => events: auth::AuditEvent,
}

/// [`paginate`] over a list call: `call(token, size)` asks for one page.
pub async fn all<R: Page>(
    limit: Option<usize>,
    mut call: impl AsyncFnMut(String, i32) -> Result<tonic::Response<R>, tonic::Status>,
) -> Result<Vec<R::Item>, tonic::Status> {
    paginate(limit, async |token, size| {
        Ok(call(token, size).await?.into_inner().split())
    })
    .await
}

/// Calls `page(token, size)` until the server returns an empty next-page
/// token or `limit` items are gathered (`None`: everything).
pub async fn paginate<T>(
    limit: Option<usize>,
    mut page: impl AsyncFnMut(String, i32) -> Result<(Vec<T>, String), tonic::Status>,
) -> Result<Vec<T>, tonic::Status> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let want = limit.map_or(PAGE, |l| (l - all.len()).min(PAGE));
        // `want` ≤ PAGE, so it fits an i32.
        let (items, next) = page(token, want as i32).await?;
        all.extend(items);
        if let Some(l) = limit {
            all.truncate(l);
        }
        if next.is_empty() || limit.is_some_and(|l| all.len() >= l) {
            return Ok(all);
        }
        token = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server holding `n` items, answering pages of at most `max`.
    fn server(
        n: usize,
        max: usize,
    ) -> impl AsyncFnMut(String, i32) -> Result<(Vec<usize>, String), tonic::Status> {
        move |token: String, size: i32| {
            let start: usize = token.parse().unwrap_or(0);
            let end = (start + (size as usize).min(max)).min(n);
            let next = if end < n {
                end.to_string()
            } else {
                String::new()
            };
            async move { Ok(((start..end).collect(), next)) }
        }
    }

    #[tokio::test]
    async fn gathers_every_page_or_stops_at_the_limit() {
        let all = paginate(None, server(2_500, 1000)).await.unwrap();
        assert_eq!(all, (0..2_500).collect::<Vec<_>>());
        // A server with a smaller page than asked for.
        let all = paginate(None, server(250, 100)).await.unwrap();
        assert_eq!(all.len(), 250);
        let some = paginate(Some(1_500), server(2_500, 1000)).await.unwrap();
        assert_eq!(some, (0..1_500).collect::<Vec<_>>());
        let none = paginate(None, server(0, 1000)).await.unwrap();
        assert!(none.is_empty());
    }
}
