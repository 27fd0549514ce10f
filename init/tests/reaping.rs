//! As PID 1 does, a supervisor that reaps any child (here in a child subreaper, so that orphans
//! come to this test process) reaps orphans its services leave behind: no zombie stays. Its own
//! test binary: reaping every child would take other tests' children.

use std::time::Duration;

use baton_init::{ReapMode, RestartPolicy, ServiceSpec, Supervisor, SupervisorOptions};

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            after_name.trim_start().starts_with('Z')
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "current_thread")]
async fn orphans_left_by_a_service_are_reaped() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("orphan");
    // The service starts a background child, records its pid and exits at once: the child is
    // orphaned, re-parented to this process, and exits 200 ms later.
    let script = format!("sleep 0.2 & echo $! > {}; exit 0", pid_file.display());
    let specs =
        vec![ServiceSpec::new("parent", "/bin/sh", &["-c", &script]).restart(RestartPolicy::Never)];
    let options = SupervisorOptions {
        reap: ReapMode::AnyChild,
        console: false,
        ..SupervisorOptions::default()
    };
    let (supervisor, handle) = Supervisor::new(specs, options).unwrap();
    let task = tokio::spawn(supervisor.run());
    let orphan: u32 = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(text) = std::fs::read_to_string(&pid_file)
                && let Ok(pid) = text.trim().parse()
            {
                break pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the service records its child's pid");
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        // A zombie keeps its /proc entry until it is reaped.
        while std::path::Path::new(&format!("/proc/{orphan}")).exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "orphan {orphan} was not reaped (zombie: {})",
        zombie(orphan)
    );
    handle.shutdown();
    task.await.unwrap().unwrap();
}
