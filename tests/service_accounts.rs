//! Service account tokens against a real etcd and `baton apiserver`, driven with kubectl as a
//! user does: `kubectl create token`, a kubeconfig holding only the token, `kubectl auth
//! whoami`, tokens bound to a pod, and the API token volume admission adds to pods.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use baton_test_harness::{ApiServer, Binary, Etcd, kubectl_binaries, wait_until};

struct Kubectl<'a> {
    server: &'a ApiServer,
    bin: PathBuf,
}

impl Kubectl<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.server.kubectl(&self.bin, args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "kubectl {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    fn apply(&self, manifest: &str) {
        let out = self
            .server
            .kubectl_with_input(&self.bin, &["apply", "-f", "-"], Some(manifest));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A kubeconfig that authenticates with `token` alone (no client certificate).
fn token_kubeconfig(server: &ApiServer, name: &str, token: &str) -> String {
    let path = server.token_kubeconfig(name, token).unwrap();
    path.display().to_string()
}

const ACCOUNTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: builder, namespace: team}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: quiet, namespace: team}
automountServiceAccountToken: false
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: team}
spec:
  serviceAccountName: builder
  initContainers:
  - {name: init, image: busybox:1.36}
  containers:
  - {name: web, image: busybox:1.36}
  - name: own
    image: busybox:1.36
    volumeMounts:
    - {name: mine, mountPath: /var/run/secrets/kubernetes.io/serviceaccount}
  volumes:
  - {name: mine, emptyDir: {}}
---
apiVersion: v1
kind: Pod
metadata: {name: opted-out, namespace: team}
spec:
  serviceAccountName: builder
  automountServiceAccountToken: false
  containers:
  - {name: web, image: busybox:1.36}
---
apiVersion: v1
kind: Pod
metadata: {name: quiet, namespace: team}
spec:
  serviceAccountName: quiet
  containers:
  - {name: web, image: busybox:1.36}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_authenticate_their_service_account_until_what_they_name_is_gone() {
    let binary = Binary(env!("CARGO_BIN_EXE_baton").into());
    let etcd = Etcd::start().await.unwrap();
    let server = ApiServer::start(&binary, &etcd.url(), &[]).await.unwrap();
    let k = Kubectl {
        server: &server,
        bin: kubectl_binaries().remove(0),
    };
    k.apply(ACCOUNTS);

    // A token from `kubectl create token` is all a client needs.
    let token = k.ok(&["create", "token", "builder", "-n", "team"]);
    let builder = token_kubeconfig(&server, "builder", &token);
    let whoami = k.ok(&["--kubeconfig", &builder, "auth", "whoami", "-o", "json"]);
    let review: serde_json::Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(
        review["status"]["userInfo"]["username"],
        "system:serviceaccount:team:builder"
    );
    assert_eq!(
        review["status"]["userInfo"]["groups"],
        serde_json::json!([
            "system:serviceaccounts",
            "system:serviceaccounts:team",
            "system:authenticated"
        ])
    );
    // Impersonation: `--as` acts as another user (any user may, until RBAC is enforced),
    // with the groups asked for and system:authenticated, or a service account's groups.
    let as_jane = k.ok(&[
        "auth",
        "whoami",
        "--as=jane",
        "--as-group=devs",
        "--as-uid=u-1",
        "-o",
        "json",
    ]);
    let review: serde_json::Value = serde_json::from_str(&as_jane).unwrap();
    assert_eq!(
        review["status"]["userInfo"],
        serde_json::json!({"username": "jane", "uid": "u-1", "groups": ["devs", "system:authenticated"]})
    );
    let as_account = k.ok(&[
        "--kubeconfig",
        &builder,
        "auth",
        "whoami",
        "--as=system:serviceaccount:team:quiet",
        "-o",
        "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
    ]);
    assert_eq!(
        as_account,
        r#"system:serviceaccount:team:quiet ["system:serviceaccounts","system:serviceaccounts:team","system:authenticated"]"#
    );
    k.ok(&["get", "serviceaccounts", "-n", "team", "--as=jane"]);
    // Other systems verify the tokens with the keys the issuer discovery document points at.
    let discovery: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "--raw", "/.well-known/openid-configuration"]))
            .unwrap();
    assert_eq!(
        discovery["issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(
        discovery["jwks_uri"],
        format!("{}/openid/v1/jwks", server.url()),
        "on the API server's address, as upstream"
    );
    let jwks: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "--raw", "/openid/v1/jwks"])).unwrap();
    use base64::Engine;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["alg"], "ES256");
    let key = &jwks["keys"][0];
    assert_eq!(key["kid"], header["kid"], "{jwks}");
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    let pods = k.ok(&[
        "--kubeconfig",
        &builder,
        "get",
        "pods",
        "-n",
        "team",
        "-o",
        "name",
    ]);
    assert!(pods.contains("pod/web"), "{pods}");

    // A token altered by one character is refused.
    let mut forged = token.clone().into_bytes();
    let middle = token.find('.').unwrap() + 5;
    forged[middle] = if forged[middle] == b'A' { b'B' } else { b'A' };
    let forged = token_kubeconfig(&server, "forged", std::str::from_utf8(&forged).unwrap());
    let err = k.fails(&["--kubeconfig", &forged, "get", "pods", "-n", "team"]);
    assert!(err.contains("Unauthorized"), "{err}");

    // Requests the API refuses, with upstream's words.
    let err = k.fails(&["create", "token", "builder", "-n", "team", "--duration=5m"]);
    assert!(
        err.contains("spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 minutes"),
        "{err}"
    );
    let err = k.fails(&["create", "token", "nobody", "-n", "team"]);
    assert!(
        err.contains(r#"serviceaccounts "nobody" not found"#),
        "{err}"
    );
    let err = k.fails(&[
        "create",
        "token",
        "quiet",
        "-n",
        "team",
        "--bound-object-kind=Pod",
        "--bound-object-name=web",
    ]);
    assert!(
        err.contains(r#"cannot bind token for serviceaccount "quiet" to pod running with different serviceaccount name."#),
        "{err}"
    );

    // Admission: every container without its own mount at the path gets the token volume.
    let pod: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "pod", "web", "-n", "team", "-o", "json"])).unwrap();
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let token_volume = volumes
        .iter()
        .find(|v| v["name"].as_str().unwrap().starts_with("kube-api-access-"))
        .expect("a kube-api-access volume");
    let sources = &token_volume["projected"]["sources"];
    assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
    assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
    assert_eq!(
        sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    let mounts_of = |list: &str, i: usize| pod["spec"][list][i]["volumeMounts"].clone();
    for (list, i) in [("initContainers", 0), ("containers", 0)] {
        assert_eq!(
            mounts_of(list, i)[0]["name"],
            token_volume["name"],
            "{list}[{i}]"
        );
        assert_eq!(mounts_of(list, i)[0]["readOnly"], true);
    }
    assert_eq!(mounts_of("containers", 1).as_array().unwrap().len(), 1);
    for opted_out in ["opted-out", "quiet"] {
        let volumes = k.ok(&[
            "get",
            "pod",
            opted_out,
            "-n",
            "team",
            "-o",
            "jsonpath={.spec.volumes}",
        ]);
        assert!(
            !volumes.contains("kube-api-access"),
            "{opted_out}: {volumes}"
        );
    }

    // A token bound to a pod stops working once the pod is gone.
    let bound = k.ok(&[
        "create",
        "token",
        "builder",
        "-n",
        "team",
        "--bound-object-kind=Pod",
        "--bound-object-name=web",
    ]);
    let bound = token_kubeconfig(&server, "bound", &bound);
    k.ok(&["--kubeconfig", &bound, "get", "pods", "-n", "team"]);
    k.ok(&["delete", "pod", "web", "-n", "team", "--wait=false"]);
    let gone = wait_until(
        "the pod-bound token to be refused",
        Duration::from_secs(30),
        || async {
            let out = k.run(&["--kubeconfig", &bound, "get", "pods", "-n", "team"]);
            (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).to_string())
        },
    )
    .await
    .unwrap();
    assert!(gone.contains("Unauthorized"), "{gone}");

    // A service account deleted and made again is another account: the old token is refused.
    k.ok(&["--kubeconfig", &builder, "auth", "whoami"]);
    k.ok(&["delete", "serviceaccount", "builder", "-n", "team"]);
    k.ok(&["create", "serviceaccount", "builder", "-n", "team"]);
    let refused = wait_until(
        "the old account's token to be refused",
        Duration::from_secs(30),
        || async {
            let out = k.run(&["--kubeconfig", &builder, "auth", "whoami"]);
            (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).to_string())
        },
    )
    .await
    .unwrap();
    assert!(refused.contains("Unauthorized"), "{refused}");
    drop(server);
    drop(etcd);
}
