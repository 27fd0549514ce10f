//! The runtime's order of operations and its cache, with plugins written as shell scripts
//! that follow the execution protocol and record what they were given. The reference
//! plugins themselves are run by tests/pod_network.rs.

use std::os::unix::fs::PermissionsExt;

use super::*;

struct Setup {
    dir: tempfile::TempDir,
    plugins: CniPlugins,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let plugins = CniPlugins {
            conf_dir: dir.path().join("net.d"),
            bin_dirs: vec![bin],
            cache_dir: dir.path().join("cache"),
        };
        Self { dir, plugins }
    }

    /// A plugin that appends `COMMAND name` to the log, keeps its last input per command,
    /// prints `add_output` on ADD, and fails on the command `fail_on`.
    fn plugin(&self, name: &str, add_output: &str, fail_on: &str) {
        let root = self.dir.path().display();
        let script = format!(
            "#!/bin/sh\n\
             cat > {root}/stdin-{name}-$CNI_COMMAND\n\
             echo \"$CNI_COMMAND {name} $CNI_NETNS\" >> {root}/log\n\
             if [ \"$CNI_COMMAND\" = '{fail_on}' ]; then echo '{{\"code\":7,\"msg\":\"{name} refused\"}}'; exit 1; fi\n\
             if [ \"$CNI_COMMAND\" = ADD ]; then echo '{add_output}'; fi\n"
        );
        let path = self.plugins.bin_dirs[0].join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn stdin(&self, name: &str, command: &str) -> Value {
        let path = self.dir.path().join(format!("stdin-{name}-{command}"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn attachment(&self) -> Attachment {
        Attachment {
            container_id: "pod-1".into(),
            netns: self.dir.path().join("netns"),
            ifname: "eth0".into(),
            args: vec![("K8S_POD_NAME".into(), "web".into())],
            capability_args: Map::new(),
        }
    }
}

const RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.22.0.5/16","gateway":"10.22.0.1","interface":1}]}"#;

fn network(types: &[&str]) -> NetworkConfigList {
    NetworkConfigList::from_list(serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "pods",
        "plugins": types.iter().map(|t| serde_json::json!({ "type": t })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

#[tokio::test]
async fn add_chains_results_and_del_undoes_in_reverse_with_the_cached_result() {
    let setup = Setup::new();
    let netns = setup.dir.path().join("netns");
    std::fs::write(&netns, "").unwrap();
    setup.plugin("first", RESULT, "");
    setup.plugin("second", RESULT, "");
    let attachment = setup.attachment();
    let network = network(&["first", "second"]);
    let result = setup
        .plugins
        .attach(Some(&network), &attachment)
        .await
        .unwrap();
    assert_eq!(
        result_ipv4(&result, "eth0"),
        Some(Ipv4Addr::new(10, 22, 0, 5))
    );
    // The second plugin got the first one's result.
    assert_eq!(
        setup.stdin("second", "ADD")["prevResult"],
        serde_json::from_str::<Value>(RESULT).unwrap()
    );
    assert!(setup.stdin("first", "ADD").get("prevResult").is_none());
    let cached = setup.plugins.cached("pod-1").unwrap().unwrap();
    assert_eq!(cached.attachment, attachment);
    assert_eq!(setup.plugins.cached_ids(), ["pod-1"]);
    assert!(setup.plugins.is_attached("pod-1"));

    // Attached again in the same namespace (a restarted kubelet): CHECK, and kept, even
    // without a network configured now.
    let kept = setup.plugins.attach(None, &attachment).await.unwrap();
    assert_eq!(kept, result);
    assert_eq!(setup.stdin("first", "CHECK")["prevResult"], result);

    // DEL uses the configuration the container was attached with, whatever it is given.
    setup.plugins.del("pod-1").await.unwrap();
    let netns = netns.display();
    assert_eq!(
        setup.log(),
        [
            format!("ADD first {netns}"),
            format!("ADD second {netns}"),
            format!("CHECK first {netns}"),
            format!("CHECK second {netns}"),
            format!("DEL second {netns}"),
            format!("DEL first {netns}"),
        ]
    );
    assert_eq!(setup.stdin("first", "DEL")["prevResult"], result);
    assert!(setup.plugins.cached("pod-1").unwrap().is_none());
    assert!(setup.plugins.cached_ids().is_empty());
    // Nothing cached: nothing to delete.
    setup.plugins.del("pod-1").await.unwrap();
    assert_eq!(setup.log().len(), 6);
}

#[tokio::test]
async fn a_namespace_made_again_at_the_same_path_is_attached_again() {
    let setup = Setup::new();
    let netns = setup.dir.path().join("netns");
    std::fs::write(&netns, "").unwrap();
    setup.plugin("only", RESULT, "");
    let network = network(&["only"]);
    let attachment = setup.attachment();
    setup
        .plugins
        .attach(Some(&network), &attachment)
        .await
        .unwrap();
    // The sandbox is made again (a reboot, a runtime restart): same path, another file.
    let remade = setup.dir.path().join("netns.new");
    std::fs::write(&remade, "").unwrap();
    std::fs::rename(&remade, &netns).unwrap();
    setup
        .plugins
        .attach(Some(&network), &attachment)
        .await
        .unwrap();
    let netns = netns.display();
    assert_eq!(
        setup.log(),
        [
            format!("ADD only {netns}"),
            format!("DEL only {netns}"),
            format!("ADD only {netns}"),
        ]
    );
    // Without a network to attach to, the container cannot be attached again.
    let other = Attachment {
        netns: setup.dir.path().join("other-netns"),
        ..attachment
    };
    std::fs::write(&other.netns, "").unwrap();
    let err = setup.plugins.attach(None, &other).await.unwrap_err();
    assert!(matches!(err, CniOperationError::NoNetwork), "{err}");
}

#[tokio::test]
async fn a_failed_add_is_undone_and_names_the_plugin() {
    let setup = Setup::new();
    setup.plugin("first", RESULT, "");
    setup.plugin("second", RESULT, "ADD");
    let err = setup
        .plugins
        .attach(Some(&network(&["first", "second"])), &setup.attachment())
        .await
        .unwrap_err();
    assert_eq!(
        format!("{err}: {}", std::error::Error::source(&err).unwrap()),
        "plugin type=\"second\" name=\"pods\" failed (add): second refused"
    );
    // Undone in reverse, the namespace still passed; nothing cached.
    let netns = setup.attachment().netns.display().to_string();
    assert_eq!(
        setup.log(),
        [
            format!("ADD first {netns}"),
            format!("ADD second {netns}"),
            format!("DEL second {netns}"),
            format!("DEL first {netns}"),
        ]
    );
    assert!(setup.plugins.cached("pod-1").unwrap().is_none());

    // A plugin that is not there: ADD fails, nothing is left to undo or cache, and the
    // container is attached once the network names plugins that are there.
    let err = setup
        .plugins
        .attach(Some(&network(&["first", "missing"])), &setup.attachment())
        .await
        .unwrap_err();
    assert!(
        std::error::Error::source(&err)
            .unwrap()
            .to_string()
            .starts_with("failed to find plugin \"missing\" in path ["),
        "{err:?}"
    );
    assert!(setup.plugins.cached("pod-1").unwrap().is_none());
    assert_eq!(
        setup.log()[4..],
        [format!("ADD first {netns}"), format!("DEL first {netns}")]
    );
    setup
        .plugins
        .attach(Some(&network(&["first"])), &setup.attachment())
        .await
        .unwrap();
    assert!(setup.plugins.is_attached("pod-1"));
}

#[tokio::test]
async fn what_cannot_be_undone_stays_cached_until_a_del_succeeds() {
    let setup = Setup::new();
    // ADD fails, and so does the DEL that undoes it.
    setup.plugin("stubborn", RESULT, "ADD");
    let path = setup.plugins.bin_dirs[0].join("stubborn");
    let failing_del = std::fs::read_to_string(&path)
        .unwrap()
        .replace("= 'ADD' ]", "!= 'NONE' ]");
    std::fs::write(&path, failing_del).unwrap();
    let network = network(&["stubborn"]);
    assert!(
        setup
            .plugins
            .attach(Some(&network), &setup.attachment())
            .await
            .is_err()
    );
    let pending = setup.plugins.cached("pod-1").unwrap().unwrap();
    assert!(pending.result.is_null() && !setup.plugins.is_attached("pod-1"));
    assert!(setup.plugins.del("pod-1").await.is_err());
    assert!(setup.plugins.cached("pod-1").unwrap().is_some());
    // Once DEL works, the entry goes (with no prevResult: ADD never gave one).
    setup.plugin("stubborn", RESULT, "NONE");
    setup.plugins.del("pod-1").await.unwrap();
    assert!(setup.plugins.cached_ids().is_empty());
    assert!(setup.stdin("stubborn", "DEL").get("prevResult").is_none());
}

#[tokio::test]
async fn an_unreadable_cache_entry_is_detached_with_the_current_network_and_dropped() {
    let setup = Setup::new();
    setup.plugin("only", RESULT, "");
    std::fs::create_dir_all(&setup.plugins.cache_dir).unwrap();
    std::fs::write(setup.plugins.cache_dir.join("pod-1.json"), "{ torn").unwrap();
    assert!(setup.plugins.cached("pod-1").is_err());
    // No network to detach it with: kept for later.
    assert!(setup.plugins.del("pod-1").await.is_err());
    assert_eq!(setup.plugins.cached_ids(), ["pod-1"]);
    std::fs::create_dir_all(&setup.plugins.conf_dir).unwrap();
    std::fs::write(
        setup.plugins.conf_dir.join("10-pods.conflist"),
        network(&["only"]).to_value().to_string(),
    )
    .unwrap();
    setup.plugins.del("pod-1").await.unwrap();
    assert_eq!(setup.log(), ["DEL only "]);
    assert!(setup.plugins.cached_ids().is_empty());
}

#[tokio::test]
async fn a_gone_namespace_is_not_passed_to_del_and_check_follows_the_version() {
    let setup = Setup::new();
    let netns = setup.dir.path().join("netns");
    std::fs::write(&netns, "").unwrap();
    setup.plugin("only", RESULT, "CHECK");
    let mut old = network(&["only"]);
    old.cni_version = "0.3.1".into();
    let attachment = setup.attachment();
    setup.plugins.attach(Some(&old), &attachment).await.unwrap();
    // 0.3.1 has no CHECK: attaching again keeps it without running the failing CHECK.
    setup.plugins.attach(Some(&old), &attachment).await.unwrap();
    std::fs::remove_file(&netns).unwrap();
    setup.plugins.del("pod-1").await.unwrap();
    assert_eq!(
        setup.log(),
        [format!("ADD only {}", netns.display()), "DEL only ".into()]
    );
    // ... and a 0.3.1 DEL gets no prevResult (libcni's rule).
    assert!(setup.stdin("only", "DEL").get("prevResult").is_none());

    std::fs::write(&netns, "").unwrap();
    setup
        .plugins
        .attach(Some(&network(&["only"])), &attachment)
        .await
        .unwrap();
    let cached = setup.plugins.cached("pod-1").unwrap().unwrap();
    let err = setup.plugins.check(&cached).await.unwrap_err();
    assert!(err.to_string().contains("failed (check)"), "{err}");
}

#[test]
fn the_pod_address_is_the_sandbox_interface_s() {
    let result: Value = serde_json::json!({
        "interfaces": [{ "name": "cni0" }, { "name": "vethx" }, { "name": "eth0", "sandbox": "/run/netns/p" }],
        "ips": [
            { "address": "10.0.0.1/24", "interface": 0 },
            { "address": "fd00::5/64", "interface": 2 },
            { "address": "10.0.0.5/24", "gateway": "10.0.0.1", "interface": 2 },
        ],
    });
    assert_eq!(
        result_ipv4(&result, "eth0"),
        Some(Ipv4Addr::new(10, 0, 0, 5))
    );
    // Without interface indexes (plugins of old versions), the first IPv4 address.
    let result = serde_json::json!({ "ips": [{ "address": "10.0.0.9/24" }] });
    assert_eq!(
        result_ipv4(&result, "eth0"),
        Some(Ipv4Addr::new(10, 0, 0, 9))
    );
    assert_eq!(result_ipv4(&serde_json::json!({}), "eth0"), None);
}

#[test]
fn namespaces_are_told_apart_by_their_cookie() {
    use std::os::fd::{AsFd, AsRawFd};
    let first = crate::NetNs::create().unwrap();
    let second = crate::NetNs::create().unwrap();
    let path = |namespace: &crate::NetNs| {
        std::path::PathBuf::from(format!("/proc/self/fd/{}", namespace.as_fd().as_raw_fd()))
    };
    let a = NamespaceIdentity::of(&path(&first)).unwrap();
    let b = NamespaceIdentity::of(&path(&second)).unwrap();
    assert!(a.cookie.is_some() && b.cookie.is_some(), "{a:?} {b:?}");
    assert!(!a.same_namespace(&b));
    assert!(a.same_namespace(&NamespaceIdentity::of(&path(&first)).unwrap()));
    // A cookie not read this time: the file decides.
    let unread = NamespaceIdentity {
        cookie: None,
        ..a.clone()
    };
    assert!(a.same_namespace(&unread));
    let other_boot = NamespaceIdentity {
        boot_id: "another".into(),
        ..a.clone()
    };
    assert!(!a.same_namespace(&other_boot));
}
