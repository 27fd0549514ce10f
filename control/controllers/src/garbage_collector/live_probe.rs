// TEMPORARY: runs the controller manager against a running API server for manual checks.
#[derive(clap::Parser, Debug)]
struct W {
    #[command(flatten)]
    a: crate::ControllerManagerArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn live() {
    use clap::Parser;
    init();
    let Ok(kc) = std::env::var("BATON_LIVE_KUBECONFIG") else {
        return;
    };
    let secs: u64 = std::env::var("BATON_LIVE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let extra = std::env::var("BATON_LIVE_ARGS").unwrap_or_default();
    let mut argv = vec![
        "x".to_string(),
        format!("--kubeconfig={kc}"),
        "--leader-elect=false".into(),
    ];
    argv.extend(extra.split_whitespace().map(str::to_string));
    let w = W::parse_from(argv);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(secs), crate::run(w.a)).await;
}

struct Print;
struct V(String);
impl tracing::field::Visit for V {
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", f.name(), v));
    }
}
impl tracing::Subscriber for Print {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        *m.level() <= tracing::Level::INFO
            || (m.target().starts_with("baton_controllers") && *m.level() <= tracing::Level::DEBUG)
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        let mut v = V(String::new());
        e.record(&mut v);
        eprintln!(
            "{} {} {}{}",
            jiff::Timestamp::now(),
            e.metadata().level(),
            e.metadata().target(),
            v.0
        );
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
#[ignore]
fn _set() {}

pub fn init() {
    let _ = tracing::subscriber::set_global_default(Print);
}
