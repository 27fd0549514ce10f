//! The supervisor on this machine with real processes (`sh` scripts): dependency order and
//! readiness, restart with backoff, restart on request, and ordered shutdown with SIGKILL for
//! a service that ignores SIGTERM.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_init::{
    Backoff, Readiness, RestartPolicy, ServiceSpec, ServiceState, ServiceStatus, Supervisor,
    SupervisorHandle, SupervisorOptions,
};

fn sh(name: &str, script: &str) -> ServiceSpec {
    ServiceSpec::new(name, "/bin/sh", &["-c", script])
}

fn options() -> SupervisorOptions {
    SupervisorOptions {
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            reset_after: Duration::from_secs(60),
        },
        console: false,
        ..SupervisorOptions::default()
    }
}

async fn wait_for(
    handle: &SupervisorHandle,
    what: &str,
    test: impl Fn(&[ServiceStatus]) -> bool,
) -> Vec<ServiceStatus> {
    let mut watch = handle.watch();
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        watch.wait_for(|s| test(s)).await.map(|s| s.clone())
    })
    .await;
    match waited {
        Ok(Ok(statuses)) => statuses,
        _ => panic!("timed out waiting for {what}: {:#?}", handle.status()),
    }
}

fn service<'a>(statuses: &'a [ServiceStatus], name: &str) -> &'a ServiceStatus {
    statuses.iter().find(|s| s.name == name).unwrap()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "current_thread")]
async fn a_service_starts_only_once_its_dependency_is_ready() {
    // The "database" is ready when something listens on this address, which the test opens
    // itself, later.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address: SocketAddr = reserved.local_addr().unwrap();
    drop(reserved);
    let specs = vec![
        sh("app", "echo app started; exec sleep 60").after(&["db"]),
        sh("db", "exec sleep 60").ready_when(Readiness::TcpConnect(address)),
    ];
    let (supervisor, handle) = Supervisor::new(specs, options()).unwrap();
    let task = tokio::spawn(supervisor.run());
    let statuses = wait_for(&handle, "db to run", |s| {
        service(s, "db").state == ServiceState::Running
    })
    .await;
    // db runs but is not ready (nothing listens yet): app waits.
    assert!(!service(&statuses, "db").ready);
    assert_eq!(service(&statuses, "app").state, ServiceState::Waiting);
    let _listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let opened = Instant::now();
    let statuses = wait_for(&handle, "app to run", |s| {
        service(s, "app").state == ServiceState::Running
    })
    .await;
    assert!(service(&statuses, "db").ready);
    assert!(opened.elapsed() < Duration::from_secs(5));
    let app_log = handle.logs("app").unwrap();
    wait_for(&handle, "app's output", |_| {
        app_log.lines().contains(&"app started".to_string())
    })
    .await;
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn an_exiting_service_is_restarted_with_growing_delays() {
    let specs = vec![sh("flaky", "date +%s%N; echo oops >&2; exit 3")];
    let (supervisor, handle) = Supervisor::new(specs, options()).unwrap();
    let task = tokio::spawn(supervisor.run());
    let statuses = wait_for(&handle, "three restarts", |s| {
        service(s, "flaky").restarts >= 3
    })
    .await;
    assert_eq!(
        service(&statuses, "flaky").last_exit.as_deref(),
        Some("exited with status 3")
    );
    let lines = handle.logs("flaky").unwrap().lines();
    assert!(
        lines.contains(&"oops".to_string()),
        "stderr is captured: {lines:?}"
    );
    let starts: Vec<u128> = lines.iter().filter_map(|l| l.parse().ok()).collect();
    assert!(starts.len() >= 3, "{lines:?}");
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .collect();
    // 100 ms, then 200 ms, then 400 ms (plus the time to start sh).
    assert!(gaps[0] >= 100 && gaps[1] >= 200, "gaps in ms: {gaps:?}");
    assert!(gaps[1] > gaps[0], "the delay grows: {gaps:?}");
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn policies_never_and_on_failure_leave_a_clean_exit_alone() {
    let specs = vec![
        sh("once", "exit 0").restart(RestartPolicy::Never),
        sh("job", "exit 0").restart(RestartPolicy::OnFailure),
        sh("failing-job", "exit 1").restart(RestartPolicy::OnFailure),
    ];
    let (supervisor, handle) = Supervisor::new(specs, options()).unwrap();
    let task = tokio::spawn(supervisor.run());
    let statuses = wait_for(&handle, "the jobs to end", |s| {
        service(s, "once").state == ServiceState::Exited
            && service(s, "job").state == ServiceState::Exited
            && service(s, "failing-job").restarts >= 1
    })
    .await;
    assert_eq!(service(&statuses, "once").restarts, 0);
    assert_eq!(service(&statuses, "job").restarts, 0);
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn restart_on_request_replaces_the_process() {
    let mut stubborn = sh("stubborn", "trap '' TERM; echo up; exec sleep 60");
    stubborn.stop_timeout = Duration::from_millis(300);
    let specs = vec![sh("web", "exec sleep 60"), stubborn];
    let (supervisor, handle) = Supervisor::new(specs, options()).unwrap();
    let task = tokio::spawn(supervisor.run());
    let first = wait_for(&handle, "web and stubborn to run", |s| {
        service(s, "web").pid.is_some() && service(s, "stubborn").pid.is_some()
    })
    .await;
    let stubborn_log = handle.logs("stubborn").unwrap();
    wait_for(&handle, "stubborn's trap", |_| {
        stubborn_log.lines().contains(&"up".to_string())
    })
    .await;
    let first_pid = service(&first, "web").pid.unwrap();
    handle.restart("web").await.unwrap();
    let second = wait_for(&handle, "a new web process", |s| {
        service(s, "web").pid.is_some_and(|p| p != first_pid)
    })
    .await;
    assert_eq!(service(&second, "web").restarts, 1);
    assert!(
        !pid_alive(first_pid),
        "the old process is gone (and reaped)"
    );
    // A service that ignores SIGTERM is killed after its stop timeout, then started again.
    let stubborn_first = service(&second, "stubborn").pid.unwrap();
    handle.restart("stubborn").await.unwrap();
    let third = wait_for(&handle, "a new stubborn process", |s| {
        service(s, "stubborn")
            .pid
            .is_some_and(|p| p != stubborn_first)
    })
    .await;
    assert_eq!(service(&third, "stubborn").restarts, 1);
    assert!(!pid_alive(stubborn_first));
    let err = handle.restart("nope").await.unwrap_err();
    assert_eq!(err.to_string(), "no service named nope");
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn shutdown_stops_dependents_first_and_kills_what_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("stopped");
    let stops_on_term = |name: &str| {
        format!(
            "trap 'echo {name} >> {}; exit 0' TERM; echo up; while :; do sleep 0.05; done",
            record.display()
        )
    };
    let mut stubborn = sh("stubborn", "trap '' TERM; exec sleep 60").after(&["c"]);
    stubborn.stop_timeout = Duration::from_millis(300);
    let specs = vec![
        sh("a", &stops_on_term("a")),
        sh("b", &stops_on_term("b")).after(&["a"]),
        sh("c", &stops_on_term("c")).after(&["b"]),
        stubborn,
    ];
    let (supervisor, handle) = Supervisor::new(specs, options()).unwrap();
    let task = tokio::spawn(supervisor.run());
    let statuses = wait_for(&handle, "every service to run", |s| {
        s.iter().all(|s| s.state == ServiceState::Running)
    })
    .await;
    // The traps are set once each script printed "up".
    for name in ["a", "b", "c"] {
        let ring = handle.logs(name).unwrap();
        wait_for(&handle, "the traps", |_| {
            ring.lines().contains(&"up".into())
        })
        .await;
    }
    let pids: Vec<u32> = statuses.iter().filter_map(|s| s.pid).collect();
    let started = Instant::now();
    handle.shutdown();
    task.await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    let order = std::fs::read_to_string(&record).unwrap();
    assert_eq!(order.lines().collect::<Vec<_>>(), ["c", "b", "a"]);
    let statuses = handle.status();
    assert!(
        statuses.iter().all(|s| s.state == ServiceState::Stopped),
        "{statuses:#?}"
    );
    assert_eq!(
        service(&statuses, "stubborn").last_exit.as_deref(),
        Some("killed by signal SIGKILL")
    );
    for pid in pids {
        assert!(!pid_alive(pid), "process {pid} is gone and reaped");
    }
}
