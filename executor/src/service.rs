//! The `Executor` control plane: status, running tasks, cancel, live logs,
//! drain.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use devcycle::proto::executor::v1 as pb;
use devcycle::proto::executor::v1::executor_server::Executor;
use devcycle::time::to_timestamp;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::runtime::process::Capabilities;
use crate::worker::{self, ActiveTask, State};

pub struct ExecutorService {
    pub state: Arc<State>,
    pub caps: Capabilities,
    pub drain_deadline: Duration,
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 11th and 12th here.
    (f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)) * 10
}

impl ExecutorService {
    /// The task `task_id` running here; NOT_FOUND naming the field if none.
    fn running(&self, task_id: &str) -> Result<Arc<ActiveTask>, Status> {
        let running = self.state.running.lock().get(task_id).cloned();
        running.ok_or_else(|| Status::not_found(format!("task_id: {task_id} is not running here")))
    }
}

#[tonic::async_trait]
impl Executor for ExecutorService {
    async fn get_status(
        &self,
        _req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let st = &self.state;
        let state = if st.draining.load(Ordering::Relaxed) {
            pb::ExecutorState::Draining
        } else if st.connected.load(Ordering::Relaxed) {
            pb::ExecutorState::Serving
        } else {
            pb::ExecutorState::Connecting
        };
        Ok(Response::new(pb::GetStatusResponse {
            worker_id: st.worker_id.clone(),
            state: state as i32,
            slots: st.slots,
            running: st.in_flight(),
            usage: Some(pb::ResourceUsage {
                rss_bytes: rss_bytes(),
                cpu_time_ms: cpu_ms(),
            }),
            isolation: Some(pb::Isolation {
                bubblewrap: self.caps.bwrap.is_some(),
                cgroups: self.caps.cgroups.is_some(),
                cgroup_version: match self.caps.cgroups.as_ref().map(|c| &c.version) {
                    Some(crate::runtime::cgroup::Version::V1) => "v1".into(),
                    Some(crate::runtime::cgroup::Version::V2) => "v2".into(),
                    None => String::new(),
                },
                rlimits: true,
            }),
            agents: st.agents.clone(),
        }))
    }

    async fn list_running_tasks(
        &self,
        _req: Request<pb::ListRunningTasksRequest>,
    ) -> Result<Response<pb::ListRunningTasksResponse>, Status> {
        let mut tasks: Vec<pb::RunningTask> = self
            .state
            .running
            .lock()
            .values()
            .map(|r| pb::RunningTask {
                task_id: r.lease.task_id.clone(),
                attempt: r.lease.attempt,
                run_id: r.run_id.clone(),
                agent: r.agent.clone(),
                agent_version: r.version.clone(),
                start_time: Some(prost_types::Timestamp::from(r.started)),
                lease_deadline: (r.deadline > 0).then(|| to_timestamp(r.deadline)),
                pid: r.pid.load(Ordering::Relaxed),
            })
            .collect();
        tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        Ok(Response::new(pb::ListRunningTasksResponse { tasks }))
    }

    async fn cancel_task(
        &self,
        req: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let r = req.into_inner();
        let running = self.running(&r.task_id)?;
        tracing::warn!(task_id = %r.task_id, reason = %r.reason, "task cancelled by an operator");
        // The task's result reports the cancellation; the process group dies.
        running.cancel.cancel();
        Ok(Response::new(pb::CancelTaskResponse {}))
    }

    type StreamTaskLogsStream =
        Pin<Box<dyn Stream<Item = Result<pb::StreamTaskLogsResponse, Status>> + Send>>;

    async fn stream_task_logs(
        &self,
        req: Request<pb::StreamTaskLogsRequest>,
    ) -> Result<Response<Self::StreamTaskLogsStream>, Status> {
        let running = self.running(&req.into_inner().task_id)?;
        let mut live = running.logs.subscribe();
        let backlog: Vec<_> = running.recent.lock().iter().cloned().collect();
        let (tx, rx) = mpsc::channel(256);
        let line = |(at, stream, line): (i64, String, String)| pb::StreamTaskLogsResponse {
            time: Some(to_timestamp(at)),
            stream,
            line,
        };
        tokio::spawn(async move {
            let mut last = 0;
            for l in backlog {
                last = l.0;
                if tx.send(Ok(line(l))).await.is_err() {
                    return;
                }
            }
            drop(running);
            loop {
                match live.recv().await {
                    Ok(l) if l.0 >= last => {
                        if tx.send(Ok(line(l))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let ms = req.into_inner().deadline_ms;
        let deadline = if ms == 0 {
            self.drain_deadline
        } else {
            Duration::from_millis(u64::from(ms))
        };
        let running = self.state.in_flight();
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            worker::drain(&state, deadline).await;
        });
        Ok(Response::new(pb::DrainResponse { running }))
    }
}
