//! kubectl end to end against a real etcd and `baton apiserver`, as a user types it, with both
//! kubectl versions these machines carry (v1.32 and v1.33).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use baton_test_harness::{ApiServer, Binary, Etcd, kubectl_binaries, wait_until};

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: demo
  labels: {app: web}
data:
  greeting: hello
---
apiVersion: v1
kind: Secret
metadata:
  name: web-secret
  namespace: demo
stringData:
  password: s3cret
"#;

struct Kubectl<'a> {
    server: &'a ApiServer,
    bin: &'a Path,
}

impl Kubectl<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.server.kubectl(self.bin, args)
    }

    fn input(&self, args: &[&str], input: &str) -> Output {
        self.server.kubectl_with_input(self.bin, args, Some(input))
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        check(&out, self.bin, args)
    }

    fn ok_input(&self, args: &[&str], input: &str) -> String {
        let out = self.input(args, input);
        check(&out, self.bin, args)
    }
}

fn check(out: &Output, bin: &Path, args: &[&str]) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {args:?} failed: {stdout}\n{stderr}",
        bin.display()
    );
    stdout
}

fn lines_with(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

async fn scenario(binary: &Binary, bin: &Path) {
    let etcd = Etcd::start().await.expect("etcd");
    let server = ApiServer::start(binary, &etcd.url(), &[])
        .await
        .expect("apiserver");
    let k = Kubectl {
        server: &server,
        bin,
    };

    // kubectl's typed clients send protobuf bodies.
    assert!(
        k.ok(&["create", "namespace", "demo"])
            .contains("namespace/demo created")
    );
    k.ok(&[
        "create",
        "configmap",
        "literal",
        "-n",
        "demo",
        "--from-literal=a=b",
    ]);
    assert_eq!(
        k.ok(&[
            "get",
            "cm",
            "literal",
            "-n",
            "demo",
            "-o",
            "jsonpath={.data.a}"
        ]),
        "b"
    );
    k.ok(&[
        "create",
        "deployment",
        "made",
        "-n",
        "demo",
        "--image=busybox:1.36",
        "--replicas=0",
    ]);
    let made = k.ok(&[
        "get",
        "deploy",
        "made",
        "-n",
        "demo",
        "-o",
        "jsonpath={.spec.replicas} {.spec.template.spec.restartPolicy}",
    ]);
    assert_eq!(made, "0 Always", "replicas 0 kept, defaults applied");
    k.ok(&["delete", "deploy", "made", "-n", "demo"]);

    // Multi-document apply.
    let out = k.ok_input(&["apply", "-f", "-"], APP);
    for line in [
        "deployment.apps/web created",
        "service/web created",
        "configmap/web-config created",
        "secret/web-secret created",
    ] {
        assert!(out.contains(line), "missing {line:?} in {out}");
    }
    let out = k.ok_input(&["apply", "-f", "-"], APP);
    // As upstream: a Secret applied with stringData always reports "configured", since the
    // write-only stringData is never in the live object kubectl compares against.
    assert_eq!(lines_with(&out, "unchanged"), 3, "second apply: {out}");
    assert!(out.contains("secret/web-secret configured"), "{out}");
    let changed = APP.replace("greeting: hello", "greeting: bye");
    let out = k.ok_input(&["apply", "-f", "-"], &changed);
    assert!(out.contains("configmap/web-config configured"), "{out}");
    assert!(
        out.contains("deployment.apps/web unchanged") && out.contains("service/web unchanged"),
        "{out}"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "configmap",
            "web-config",
            "-n",
            "demo",
            "-o",
            "jsonpath={.data.greeting}"
        ]),
        "bye"
    );
    // stringData was folded into data.
    assert_eq!(
        k.ok(&[
            "get",
            "secret",
            "web-secret",
            "-n",
            "demo",
            "-o",
            "jsonpath={.data.password}"
        ]),
        "czNjcmV0"
    );

    // A `kind: List` is validated on the client against /openapi/v2 (which kubectl reads in
    // gnostic's protobuf encoding) before any item is applied.
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: listed-a, namespace: demo}\n  data: {x: '1'}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: listed-b, namespace: demo}\n  data: {x: '2'}\n";
    let out = k.ok_input(&["apply", "-f", "-"], list);
    assert!(
        out.contains("configmap/listed-a created") && out.contains("configmap/listed-b created"),
        "{out}"
    );
    let out = k.ok_input(&["apply", "-f", "-"], list);
    assert_eq!(
        lines_with(&out, "unchanged"),
        2,
        "second apply of the List: {out}"
    );
    let bad_list = list
        .replace("data: {x: '2'}", "data: {x: '2'}\n  bogus: 1")
        .replace("listed-a", "listed-c");
    let refused = k.input(&["apply", "-f", "-"], &bad_list);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(r#"unknown field "bogus" in io.k8s.api.core.v1.ConfigMap"#),
        "{stderr}"
    );
    assert!(
        !k.run(&["get", "configmap", "listed-c", "-n", "demo"])
            .status
            .success(),
        "an item of a refused List was applied"
    );

    // Server-side apply: a field the manager stops applying is removed.
    let ssa = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: demo\ndata:\n  a: \"1\"\n  b: \"2\"\n";
    assert!(
        k.ok_input(&["apply", "--server-side", "-f", "-"], ssa)
            .contains("configmap/ssa serverside-applied")
    );
    let ssa2 = ssa.replace("  b: \"2\"\n", "");
    k.ok_input(&["apply", "--server-side", "-f", "-"], &ssa2);
    assert_eq!(
        k.ok(&["get", "cm", "ssa", "-n", "demo", "-o", "jsonpath={.data}"]),
        r#"{"a":"1"}"#
    );

    // get in its output forms.
    let wide = k.ok(&["get", "deploy", "-n", "demo", "-o", "wide"]);
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ],
        "{wide}"
    );
    assert!(
        wide.lines()
            .nth(1)
            .unwrap_or_default()
            .contains("busybox:1.36"),
        "{wide}"
    );
    let svc = k.ok(&["get", "svc", "web", "-n", "demo"]);
    assert!(svc.contains("ClusterIP") && svc.contains("80/TCP"), "{svc}");
    let yaml = k.ok(&["get", "deploy", "web", "-n", "demo", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Deployment") && yaml.contains("maxSurge: 25%"),
        "{yaml}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "deploy", "web", "-n", "demo", "-o", "json"]))
            .expect("json");
    assert_eq!(
        json["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    assert_eq!(json["metadata"]["generation"], 1);
    let cols = k.ok(&[
        "get",
        "svc",
        "-A",
        "-o",
        "custom-columns=NAME:.metadata.name,NS:.metadata.namespace",
    ]);
    assert!(
        cols.contains("kubernetes") && cols.contains("web"),
        "{cols}"
    );
    let all = k.ok(&["get", "cm", "-A", "-l", "app=web"]);
    assert_eq!(all.lines().count(), 2, "{all}");
    let field = k.ok(&[
        "get",
        "ns",
        "--field-selector",
        "metadata.name=demo",
        "-o",
        "name",
    ]);
    assert_eq!(field.trim(), "namespace/demo");

    // label, annotate, the three patch types, scale.
    k.ok(&["label", "deploy", "web", "-n", "demo", "tier=fe"]);
    k.ok(&["annotate", "deploy", "web", "-n", "demo", "note=hi"]);
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "demo",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox:1.37"}]}}}}"#,
    ]);
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "demo",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"labels":{"m":"1"}}}"#,
    ]);
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "demo",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
    ]);
    k.ok(&["scale", "deploy", "web", "-n", "demo", "--replicas", "5"]);
    let got = k.ok(&["get", "deploy", "web", "-n", "demo", "-o", "jsonpath={.spec.replicas} {.metadata.labels.tier} {.metadata.labels.m} {.metadata.annotations.note} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}"]);
    assert_eq!(got, "5 fe 1 hi busybox:1.37 8080");

    // Server-side apply refuses to take a field another manager set, unless forced.
    let ssa_web = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: demo\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: busybox:1.37\n";
    let refused = k.input(&["apply", "--server-side", "-f", "-"], ssa_web);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    // kubectl scale names no field manager, so (as upstream) its user agent's product is used.
    assert!(
        stderr.contains(r#"Apply failed with 1 conflict: conflict with "kubectl"#)
            && stderr.contains("apps/v1: .spec.replicas"),
        "{stderr}"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "5"
    );
    k.ok_input(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        ssa_web,
    );
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "2"
    );

    // get -w sees a later change.
    let watch = server
        .kubectl_background(bin, &["get", "configmaps", "-n", "demo", "-w"])
        .expect("kubectl get -w");
    wait_until(
        "kubectl get -w to print the initial list",
        Duration::from_secs(20),
        || async { watch.output().contains("web-config").then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", watch.output()));
    k.ok_input(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: late\n  namespace: demo\n",
    );
    wait_until(
        "kubectl get -w to print the change",
        Duration::from_secs(20),
        || async {
            watch
                .output()
                .lines()
                .any(|l| l.starts_with("late"))
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", watch.output()));
    drop(watch);

    // delete --wait and delete -l.
    assert!(
        k.ok(&["delete", "cm", "late", "-n", "demo", "--wait"])
            .contains("configmap \"late\" deleted")
    );
    let out = k.ok(&["delete", "cm,secret", "-n", "demo", "-l", "app=web"]);
    assert!(out.contains("configmap \"web-config\" deleted"), "{out}");
    let left = k.run(&["get", "cm", "web-config", "-n", "demo"]);
    assert!(String::from_utf8_lossy(&left.stderr).contains("configmaps \"web-config\" not found"));

    // explain and api-resources.
    let explain = k.ok(&["explain", "pod.spec.containers"]);
    assert!(
        explain.contains("FIELDS") && explain.contains("image"),
        "{explain}"
    );
    let resources = k.ok(&["api-resources"]);
    assert!(
        resources
            .lines()
            .any(|l| l.starts_with("deployments") && l.contains("apps/v1")),
        "{resources}"
    );

    // An invalid object is refused with upstream's text, and nothing is stored.
    let bad = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bad\n  namespace: demo\nspec:\n  replicas: -1\n  selector:\n    matchLabels: {app: a}\n  template:\n    metadata:\n      labels: {app: b}\n    spec:\n      containers: [{name: c, image: i}]\n";
    let out = k.input(&["create", "-f", "-"], bad);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"The Deployment "bad" is invalid"#),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.replicas: Invalid value: -1: must be greater than or equal to 0"),
        "{stderr}"
    );
    assert!(stderr.contains(r#"spec.template.metadata.labels: Invalid value: map[string]string{"app":"b"}: `selector` does not match template `labels`"#), "{stderr}");
    let missing = k.run(&["get", "deploy", "bad", "-n", "demo"]);
    assert!(!missing.status.success());

    // Access reviews: with no RBAC enforced, every authenticated user may do everything, and
    // `kubectl auth can-i` says so (typed clients send these reviews as protobuf).
    assert_eq!(
        k.ok(&["auth", "can-i", "create", "pods", "-n", "demo"])
            .trim(),
        "yes"
    );
    assert_eq!(k.ok(&["auth", "can-i", "get", "/healthz"]).trim(), "yes");
    let rules = k.ok(&["auth", "can-i", "--list", "-n", "demo"]);
    assert!(
        rules
            .lines()
            .any(|l| l.starts_with("*.*") && l.contains("[*]")),
        "{rules}"
    );

    // RBAC objects, as charts and operators create them (stored and served; not enforced).
    let admin = k.ok(&["get", "clusterrolebinding", "cluster-admin", "-o", "wide"]);
    assert!(
        lines_with(&admin, "ClusterRole/cluster-admin") == 1 && admin.contains("system:masters"),
        "{admin}"
    );
    k.ok(&[
        "create",
        "role",
        "reader",
        "-n",
        "demo",
        "--verb=get,list",
        "--resource=pods",
    ]);
    k.ok(&["create", "serviceaccount", "robot", "-n", "demo"]);
    k.ok(&[
        "create",
        "rolebinding",
        "robot-reads",
        "-n",
        "demo",
        "--role=reader",
        "--serviceaccount=demo:robot",
        "--user=jane",
    ]);
    let bindings = k.ok(&["get", "rolebindings", "-n", "demo", "-o", "wide"]);
    let header = bindings.lines().next().unwrap_or_default();
    for column in ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"] {
        assert!(header.contains(column), "{bindings}");
    }
    let row = bindings
        .lines()
        .find(|l| l.starts_with("robot-reads"))
        .unwrap_or_default();
    assert!(
        row.contains("Role/reader") && row.contains("jane") && row.contains("demo/robot"),
        "{bindings}"
    );
    let rules = k.ok(&[
        "get",
        "role",
        "reader",
        "-n",
        "demo",
        "-o",
        "jsonpath={.rules[0].verbs}",
    ]);
    assert_eq!(rules, r#"["get","list"]"#);
    let changed = k.run(&[
        "patch",
        "rolebinding",
        "robot-reads",
        "-n",
        "demo",
        "--type=merge",
        "-p",
        r#"{"roleRef":{"kind":"ClusterRole","name":"admin"}}"#,
    ]);
    let stderr = String::from_utf8_lossy(&changed.stderr);
    assert!(
        !changed.status.success() && stderr.contains("cannot change roleRef"),
        "{stderr}"
    );
    // Names with colons, and the API groups a manifest leaves out, as charts write them.
    k.ok_input(
        &["apply", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: \"system:demo-reader\"}\nrules:\n- {apiGroups: [\"\"], resources: [pods], verbs: [get]}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: \"system:demo-reader\"}\nroleRef: {kind: ClusterRole, name: \"system:demo-reader\"}\nsubjects:\n- {kind: Group, name: \"system:authenticated\"}\n",
    );
    let defaulted = k.ok(&[
        "get",
        "clusterrolebinding",
        "system:demo-reader",
        "-o",
        "jsonpath={.roleRef.apiGroup} {.subjects[0].apiGroup}",
    ]);
    assert_eq!(
        defaulted,
        "rbac.authorization.k8s.io rbac.authorization.k8s.io"
    );
    let resources = k.ok(&["api-resources", "--api-group=rbac.authorization.k8s.io"]);
    assert_eq!(
        lines_with(&resources, "rbac.authorization.k8s.io/v1"),
        4,
        "{resources}"
    );

    // Ingresses, IngressClasses and NetworkPolicies, for the controllers that act on them.
    k.ok(&[
        "create",
        "ingress",
        "web",
        "-n",
        "demo",
        "--class=nginx",
        "--rule=web.example/=web:80",
        "--rule=api.example/*=web:80,tls",
    ]);
    k.ok_input(
        &["apply", "-f", "-"],
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: nginx}\nspec:\n  controller: example.com/ingress\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-only, namespace: demo}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from:\n    - podSelector: {}\n    ports:\n    - {port: 8080}\n",
    );
    let ingresses = k.ok(&["get", "ing", "-n", "demo"]);
    let row = ingresses
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_default();
    for cell in ["nginx", "web.example,api.example", "80, 443"] {
        assert!(row.contains(cell), "{cell}: {ingresses}");
    }
    let classes = k.ok(&["get", "ingressclass"]);
    assert!(
        classes.lines().any(|l| l.starts_with("nginx")
            && l.contains("example.com/ingress")
            && l.contains("<none>")),
        "{classes}"
    );
    let policies = k.ok(&["get", "netpol", "-n", "demo"]);
    assert!(
        policies
            .lines()
            .any(|l| l.starts_with("web-only") && l.contains("app=web")),
        "{policies}"
    );
    // Upstream's defaults: TCP ports, and policyTypes Ingress for a policy without egress.
    let defaulted = k.ok(&[
        "get",
        "netpol",
        "web-only",
        "-n",
        "demo",
        "-o",
        "jsonpath={.spec.ingress[0].ports[0]} {.spec.policyTypes}",
    ]);
    assert_eq!(defaulted, r#"{"port":8080,"protocol":"TCP"} ["Ingress"]"#);

    // `kubectl debug POD` adds an ephemeral container through the pod's ephemeralcontainers
    // subresource; `kubectl describe` lists it.
    k.ok(&["run", "debugme", "-n", "demo", "--image=busybox:1.35"]);
    k.ok(&[
        "debug",
        "debugme",
        "-n",
        "demo",
        "--image=busybox:1.35",
        "--container=dbg",
        "--target=debugme",
        "--",
        "true",
    ]);
    let added = k.ok(&[
        "get",
        "pod",
        "debugme",
        "-n",
        "demo",
        "-o",
        "jsonpath={.spec.ephemeralContainers[0].name} {.spec.ephemeralContainers[0].targetContainerName} {.spec.ephemeralContainers[0].terminationMessagePolicy}",
    ]);
    assert_eq!(added, "dbg debugme File");
    let described = k.ok(&["describe", "pod", "debugme", "-n", "demo"]);
    assert!(described.contains("Ephemeral Containers:"), "{described}");
    // A pod's own update cannot change them, as upstream.
    let refused = k.run(&[
        "patch",
        "pod",
        "debugme",
        "-n",
        "demo",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/ephemeralContainers"}]"#,
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("pod updates may not change fields"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scenarios_with_each_kubectl_version() {
    let binary = Binary(env!("CARGO_BIN_EXE_baton").into());
    for bin in kubectl_binaries() {
        scenario(&binary, &bin).await;
    }
}
