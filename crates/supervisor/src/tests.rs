//! The supervisor's lifecycle, on tokio's paused clock: no test waits in real time. A `sleep`
//! in a test lets the clock jump from timer to timer, so every backoff in between fires in turn.

use std::sync::atomic::AtomicU32;

use super::*;

fn policy() -> RestartPolicy {
    RestartPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(10),
        healthy_after: Duration::from_secs(60),
    }
}

fn status(supervisor: &Supervisor, name: &str) -> ServiceStatus {
    supervisor
        .statuses()
        .into_iter()
        .find(|s| s.name == name)
        .expect("service is known")
}

/// Lets spawned tasks run until none can make progress without the clock moving.
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

#[test]
fn delays_grow_to_the_cap_and_keep_jitter_in_the_upper_half() {
    let p = policy();
    for failures in 1..40 {
        let step = p
            .initial
            .saturating_mul(1 << (failures - 1).min(20))
            .min(p.max);
        for _ in 0..20 {
            let d = p.delay(failures);
            assert!(d <= step && d >= step / 2, "{failures}: {d:?} vs {step:?}");
        }
    }
    assert!(p.delay(30) >= p.max / 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_service_restarts_with_backoff_and_shows_as_failing() {
    let supervisor = Supervisor::new(policy());
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    supervisor.spawn("flaky", move |_stop| {
        let counted = counted.clone();
        async move {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            if n < 3 {
                Err(ServiceError::transient(format!("failure {n}")))
            } else {
                std::future::pending().await
            }
        }
    });
    settle().await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let s = status(&supervisor, "flaky");
    assert_eq!(s.state, State::Backoff);
    assert!(s.is_failing());
    assert_eq!(
        s.last_error,
        Some((ErrorClass::Transient, "failure 0".into()))
    );
    // Not before the first delay's lower bound (half of 100 ms) ...
    tokio::time::sleep(Duration::from_millis(49)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // ... and by its upper bound.
    tokio::time::sleep(Duration::from_millis(51)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(status(&supervisor, "flaky").failures, 2);
    // The second delay is up to 200 ms, the third up to 400 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    let s = status(&supervisor, "flaky");
    assert_eq!((s.state, s.restarts), (State::Running, 3));
    assert!(s.is_failing(), "failing until it ran for healthy_after");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let s = status(&supervisor, "flaky");
    assert!(!s.is_failing());
    assert_eq!((s.failures, s.last_error), (0, None));
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_is_reported_and_retried_with_backoff() {
    let supervisor = Supervisor::new(policy());
    supervisor.spawn("broken", |_stop| async {
        Err(ServiceError::permanent("column \"x\" does not exist"))
    });
    settle().await;
    let failing = supervisor.failing();
    assert_eq!(failing.len(), 1);
    assert_eq!(failing[0].name, "broken");
    assert_eq!(
        failing[0].last_error.as_ref().unwrap().0,
        ErrorClass::Permanent
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    // 100 ms doubling up to 10 s: at most 9 runs fit in 20 s, at least 5 (delays at their upper
    // bound: 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 6.4 > 10).
    let restarts = status(&supervisor, "broken").restarts;
    assert!((5..=10).contains(&restarts), "{restarts} restarts");
    let mut registry = Registry::default();
    supervisor.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("service_failing{service=\"broken\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "service_restarts_total{{service=\"broken\"}} {restarts}"
        )),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_a_failure_and_ok_finishes() {
    let supervisor = Supervisor::new(policy());
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    supervisor.spawn("job", move |_stop| {
        let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                panic!("boom");
            }
            Ok(())
        }
    });
    settle().await;
    let s = status(&supervisor, "job");
    assert_eq!(s.state, State::Backoff);
    assert!(s.last_error.unwrap().1.contains("panicked"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = status(&supervisor, "job");
    assert_eq!(
        (s.state, s.failures, runs.load(Ordering::SeqCst)),
        (State::Finished, 0, 2)
    );
    assert!(supervisor.failing().is_empty());
    // A finished service can be started again under its name; a running one cannot.
    assert!(supervisor.spawn("job", |_stop| std::future::pending()));
    assert!(!supervisor.spawn("job", |_stop| std::future::pending()));
}

#[tokio::test(start_paused = true)]
async fn stop_and_shutdown_cancel_runs_and_wait_for_them() {
    let supervisor = Supervisor::new(policy());
    let stopped = Arc::new(AtomicU32::new(0));
    for name in ["a", "b", "c"] {
        let stopped = stopped.clone();
        supervisor.spawn(name, move |stop| {
            let stopped = stopped.clone();
            async move {
                stop.cancelled().await;
                // Cleanup that takes a while, as a last checkpoint would.
                tokio::time::sleep(Duration::from_millis(300)).await;
                stopped.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        });
    }
    // Waiting to restart is stopped too.
    supervisor.spawn("failing", |_stop| async {
        Err(ServiceError::transient("down"))
    });
    settle().await;
    assert!(supervisor.stop("a"));
    assert!(!supervisor.stop("unknown"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(stopped.load(Ordering::SeqCst), 1);
    assert_eq!(status(&supervisor, "a").state, State::Stopped);
    supervisor.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(stopped.load(Ordering::SeqCst), 3);
    for s in supervisor.statuses() {
        assert_eq!(s.state, State::Stopped, "{}", s.name);
    }
    assert!(!supervisor.spawn("late", |_stop| async { Ok(()) }));
}

#[tokio::test(start_paused = true)]
async fn shutdown_names_the_services_that_do_not_stop_in_time() {
    let supervisor = Supervisor::new(policy());
    supervisor.spawn("stubborn", |_stop| std::future::pending());
    supervisor.spawn("polite", |stop| async move {
        stop.cancelled().await;
        Ok(())
    });
    settle().await;
    let error = supervisor
        .shutdown(Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(error.still_running, vec!["stubborn".to_owned()]);
}
