use super::*;

fn result(task: &str) -> pb::TaskResult {
    pb::TaskResult {
        lease: Some(pb::LeaseRef {
            task_id: task.into(),
            attempt: 1,
            lease_id: "l".into(),
        }),
        outcome: Some(pb::task_result::Outcome::Output("{}".into())),
        ..Default::default()
    }
}

/// Defect: results shared a bounded queue with logs and were dropped
/// when it was full. Logs are bounded and counted; results always go.
#[test]
fn a_stream_full_of_logs_still_takes_results() {
    let st = State::new("w".into(), 1, vec![]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    st.link.lock().outbound = Some(tx);
    for _ in 0..MAX_QUEUED_LOGS + 100 {
        st.send_logs(pb::TaskLogs::default());
    }
    st.send_result(result("t1"));
    let mut logs = 0;
    let mut results = 0;
    while let Ok(m) = rx.try_recv() {
        match m.msg {
            Some(pb::work_request::Msg::Logs(_)) => logs += 1,
            Some(pb::work_request::Msg::Result(_)) => results += 1,
            _ => {}
        }
    }
    assert_eq!(logs, MAX_QUEUED_LOGS, "logs beyond the bound are dropped");
    assert_eq!(results, 1);
}

/// Defect: a result reported between the resend snapshot and the swap
/// of the stream was in neither. Now it is unacknowledged (resent by the
/// next stream) and listed as held.
#[test]
fn a_result_without_a_stream_is_kept_for_the_next() {
    let st = State::new("w".into(), 1, vec![]);
    st.send_result(result("t1"));
    let link = st.link.lock();
    assert!(link.unacked.contains_key("t1"));
    let held = st.held(&link);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].task_id, "t1");
}

#[test]
fn heartbeats_follow_the_shortest_lease() {
    let st = State::new("w".into(), 2, vec![]);
    assert_eq!(st.beat(Duration::from_secs(5)), Duration::from_secs(5));
    let running = |ms| {
        Arc::new(ActiveTask {
            lease: pb::LeaseRef::default(),
            run_id: String::new(),
            agent: String::new(),
            version: String::new(),
            started: SystemTime::now(),
            deadline: 0,
            cancel: CancellationToken::new(),
            pid: Arc::new(AtomicU32::new(0)),
            logs: broadcast::channel(1).0,
            recent: Mutex::new(VecDeque::new()),
            lost: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            heartbeat: Duration::from_millis(ms),
        })
    };
    st.running.lock().insert("a".into(), running(900));
    st.running.lock().insert("b".into(), running(60_000));
    assert_eq!(st.beat(Duration::from_secs(5)), Duration::from_millis(300));
    st.running.lock().insert("c".into(), running(30));
    assert_eq!(st.beat(Duration::from_secs(5)), MIN_BEAT);
}
