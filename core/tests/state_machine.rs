//! Property tests of the run state machine: any sequence of the operations a server applies
//! to a run (claims, worker events with any payload, operator PATCHes and retries, lost and
//! handed-back workers, run and queue timeouts), with any numbers — including figures at their type's limits, as a
//! document stored before the API's limits existed may hold — never panics, and after every
//! step the invariants hold: attempts are numbered 1..n and only the last is live, a held run
//! has a worker, a terminal run refuses every change but a retry.

use chrono::{DateTime, TimeZone, Utc};
use gyoza_core::api::{AddEventRequest, OpRunCreate, OpRunUpdate};
use gyoza_core::limits;
use gyoza_core::run::NewRun;
use gyoza_core::{
    Capacity, Constraints, EventType, Gpu, OpRun, OpRunState, Resources, RetryPolicy,
};
use proptest::prelude::*;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
enum Op {
    Assign(u8),
    Event {
        kind: usize,
        msg: Value,
        payload: Value,
        attempt: Option<u32>,
    },
    Patch(usize),
    Priority(i64),
    Retry(bool),
    WorkerLost(u8, i64),
    Release(u8, u32),
    TimeOut(u32, i64),
    QueueTimeOut(u32),
    Advance(i64),
}

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        (0i64..=150).prop_map(Value::from),
        "[a-z0-9 ]{0,12}".prop_map(Value::from),
        Just(json!({})),
    ]
}

fn any_payload() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        (0u8..3, any_value())
            .prop_map(|(w, gpu)| json!({"worker_id": format!("w{w}"), "gpu_id": gpu})),
        any_value().prop_map(|v| json!({ "outputs": v })),
        any_value().prop_map(|v| json!({ "error_message": v })),
        any::<bool>().prop_map(|force| json!({ "force": force })),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3).prop_map(Op::Assign),
        (
            0..EventType::ALL.len(),
            any_value(),
            any_payload(),
            proptest::option::of(0u32..5)
        )
            .prop_map(|(kind, msg, payload, attempt)| Op::Event {
                kind,
                msg,
                payload,
                attempt
            }),
        (0..OpRunState::ALL.len()).prop_map(Op::Patch),
        any::<i64>().prop_map(Op::Priority),
        any::<bool>().prop_map(Op::Retry),
        (0u8..3, any::<i64>()).prop_map(|(w, s)| Op::WorkerLost(w, s)),
        (0u8..3, 0u32..5).prop_map(|(w, a)| Op::Release(w, a)),
        (0u32..5, prop_oneof![0i64..100, Just(i64::MAX)]).prop_map(|(a, g)| Op::TimeOut(a, g)),
        (0u32..5).prop_map(Op::QueueTimeOut),
        prop_oneof![0i64..10_000, 0i64..1_000_000_000_000].prop_map(Op::Advance),
    ]
}

fn any_policy() -> impl Strategy<Value = RetryPolicy> {
    (
        prop_oneof![1u32..5, Just(u32::MAX)],
        prop_oneof![
            0u64..5_000,
            Just(9_000_000_000_000_000),
            Just(u64::MAX),
            any::<u64>()
        ],
    )
        .prop_map(|(max_attempts, backoff_ms)| RetryPolicy {
            max_attempts,
            backoff_ms,
        })
}

/// A timeout as a stored document may hold it: none, 0 (none), a few seconds, or huge.
fn any_timeout() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        Just(None),
        Just(Some(0)),
        (1u64..20_000).prop_map(Some),
        Just(Some(u64::MAX)),
    ]
}

/// A grace of `seconds`, the longest duration beyond chrono's range.
fn grace(seconds: i64) -> chrono::Duration {
    chrono::Duration::try_seconds(seconds).unwrap_or(chrono::Duration::MAX)
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// Applies `op` to a copy of `run`, as a store does: the copy replaces the run only when the
/// domain accepted the change.
fn apply(run: &mut OpRun, op: &Op, now: &mut DateTime<Utc>) {
    let mut next = run.clone();
    let answer = match op {
        Op::Assign(w) => next.assign(&format!("w{w}"), *now),
        Op::Event {
            kind,
            msg,
            payload,
            attempt,
        } => AddEventRequest {
            event_type: EventType::ALL[*kind].as_str().to_owned(),
            msg: msg.clone(),
            payload: payload.as_object().cloned(),
            attempt: *attempt,
        }
        .apply(&mut next, *now),
        Op::Patch(state) => OpRunUpdate {
            state: Some(OpRunState::ALL[*state].as_str().to_owned()),
            ..Default::default()
        }
        .apply(&mut next, *now),
        Op::Priority(p) => OpRunUpdate {
            priority: Some(*p),
            ..Default::default()
        }
        .apply(&mut next, *now),
        Op::Retry(force) => next.retry(*force, json!("retry"), Default::default(), *now),
        Op::WorkerLost(w, silent) => next.worker_lost(&format!("w{w}"), *silent, 3, *now),
        Op::Release(w, attempt) => next.release(&format!("w{w}"), *attempt, "test", 3, *now),
        Op::TimeOut(attempt, g) => next.time_out(*attempt, grace(*g), *now),
        Op::QueueTimeOut(attempt) => next.queue_time_out(*attempt, *now),
        Op::Advance(ms) => {
            *now = now
                .checked_add_signed(chrono::Duration::milliseconds(*ms))
                .unwrap_or(*now);
            Ok(())
        }
    };
    if answer.is_ok() {
        *run = next;
    } else if matches!(op, Op::Event { .. }) {
        // A worker's batch of events applies a run's events one after the other to the same
        // run (`POST /workers/{id}/events`), with no copy: a refused event must touch nothing.
        assert_eq!(&next, run, "a refused event changed the run: {answer:?}");
    }
}

fn check_invariants(run: &OpRun) -> Result<(), TestCaseError> {
    prop_assert!(!run.attempts.is_empty());
    for (i, attempt) in run.attempts.iter().enumerate() {
        prop_assert_eq!(attempt.attempt as usize, i + 1);
        prop_assert_eq!(&attempt.id, &format!("{}_att_{}", run.id, i + 1));
        if i + 1 < run.attempts.len() {
            prop_assert!(
                attempt.state.is_terminal(),
                "superseded attempt {} is {}",
                i + 1,
                attempt.state
            );
        }
    }
    prop_assert_eq!(
        run.state,
        run.current().state,
        "the run shows its current attempt's state"
    );
    if matches!(run.state, OpRunState::Assigned | OpRunState::Running) {
        prop_assert!(run.worker_id().is_some(), "a held run has a worker");
    }
    prop_assert!(run.priority >= 0);
    prop_assert!(run.current().progress <= 100);
    Ok(())
}

/// Whether `op` may change a terminal run: a retry reopens FAILED and CANCELLED, and the
/// priority is editable in any state.
fn may_touch_terminal(op: &Op) -> bool {
    match op {
        Op::Retry(_) | Op::Priority(_) | Op::Advance(_) => true,
        Op::Event { kind, .. } => EventType::ALL[*kind] == EventType::Retried,
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_keeps_the_invariants(
        policy in any_policy(),
        timeout in any_timeout(),
        queue_timeout in any_timeout(),
        ops in proptest::collection::vec(any_op(), 1..40),
    ) {
        let new = NewRun { image: "img".into(), priority: 5, ..NewRun::default() };
        let mut run = OpRun::new(new, t0()).unwrap();
        // As a document stored before the limits may hold: any policy, any timeouts.
        run.retry_policy = policy;
        run.constraints.timeout_s = timeout;
        run.constraints.queue_timeout_s = queue_timeout;
        let mut now = t0();
        for op in &ops {
            let before = run.clone();
            apply(&mut run, op, &mut now);
            check_invariants(&run)?;
            if run != before {
                match op {
                    Op::TimeOut(attempt, g) => {
                        // Only a RUNNING attempt with a limit, past the limit and the grace,
                        // and as an ordinary failure: retried per policy, or the run FAILS.
                        let deadline = before.timeout_deadline(grace(*g));
                        prop_assert!(deadline.is_some_and(|d| d < now), "timed out early");
                        prop_assert_eq!(before.state, OpRunState::Running);
                        let ended = &run.attempts[*attempt as usize - 1];
                        prop_assert_eq!(ended.state, OpRunState::Failed);
                        prop_assert!(!ended.worker_lost);
                        prop_assert!(matches!(run.state, OpRunState::Pending | OpRunState::Failed));
                    }
                    Op::QueueTimeOut(_) => {
                        let deadline = before.queue_deadline();
                        prop_assert!(deadline.is_some_and(|d| d < now), "queue timed out early");
                        prop_assert_eq!(before.state, OpRunState::Pending);
                        prop_assert_eq!(run.state, OpRunState::Failed, "no retry");
                        prop_assert_eq!(run.attempts.len(), before.attempts.len());
                    }
                    _ => {}
                }
            }
            if before.state.is_terminal() && !may_touch_terminal(op) {
                prop_assert_eq!(&run, &before, "terminal run changed by {:?}", op);
            }
            if before.state == OpRunState::Completed {
                prop_assert_eq!(run.state, OpRunState::Completed, "{:?}", op);
            }
        }
    }

    #[test]
    fn any_figures_are_refused_or_safe(
        cpu in any::<u32>(), ram in any::<u64>(), vram in any::<u64>(),
        max_attempts in any::<u32>(), backoff_ms in any::<u64>(), priority in any::<i64>(),
        worker_cpu in any::<u32>(), worker_ram in any::<u64>(), gpu_vram in any::<u64>(),
        timeout in any::<u64>(), queue_timeout in any::<u64>(),
    ) {
        let constraints = Constraints {
            cpu: Some(cpu),
            ram_mb: Some(ram),
            vram_mb: Some(vram),
            timeout_s: Some(timeout),
            queue_timeout_s: Some(queue_timeout),
            capabilities: Vec::new(),
            tags: Vec::new(),
        };
        let created = OpRunCreate {
            image: "img".into(),
            priority,
            inputs: Default::default(),
            constraints: Some(constraints.clone()),
            retry_policy: Some(RetryPolicy { max_attempts, backoff_ms }),
            event_delivery: None,
            queue: None,
            labels: None,
            preemptible: None,
        }
        .into_run(t0());
        let within = cpu <= limits::MAX_CPU
            && ram <= limits::MAX_RAM_MB
            && vram <= limits::MAX_VRAM_MB
            && (1..=limits::MAX_ATTEMPTS).contains(&max_attempts)
            && backoff_ms <= limits::MAX_BACKOFF_MS
            && timeout <= limits::MAX_TIMEOUT_S
            && queue_timeout <= limits::MAX_TIMEOUT_S
            && (0..=limits::MAX_PRIORITY).contains(&priority);
        prop_assert_eq!(created.is_ok(), within, "{:?}", created.err());
        // Capacity arithmetic on any figures (stored documents may predate the limits).
        let gpus = vec![Gpu { id: 0, vram_mb: gpu_vram, tags: vec![] }];
        let resources = Resources { cpu_cores: worker_cpu, ram_mb: worker_ram, gpus };
        let mut free = Capacity::free(&resources, &[]);
        for _ in 0..3 {
            let gpu = free.fit(&constraints).flatten();
            free.take(&constraints, gpu);
        }
        prop_assert!(free.cpu <= i64::from(worker_cpu));
        prop_assert!(free.ram_mb <= i64::try_from(worker_ram).unwrap_or(i64::MAX));
    }
}
