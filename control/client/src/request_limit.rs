//! A cap on the API requests a client has in flight, watches aside. Over HTTP/1.1 (kube-rs's
//! own client) a burst of N concurrent requests opened N TLS connections: the kubelet starting
//! 100 pods at once went from 14 to 139 sockets. The in-tree clients now speak HTTP/2
//! ([`crate::transport`]), where such a burst is N streams of one connection; the cap still
//! keeps one client's burst from flooding the API server (client-go's kubelet has its QPS and
//! burst limits for the same reason). Requests beyond it wait their turn; watches never wait. A
//! capped request gets [`REQUEST_TIMEOUT`] for its answer, so that requests stuck on a dead
//! connection cannot hold every permit. A streaming answer read slowly (`log_stream` with
//! follow) would hold its permit as long: clients that use those should not be capped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{BoxError, Layer, Service};

/// How long a capped request may wait for its answer (its headers) once it holds a permit.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A capped request got no answer within [`REQUEST_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
#[error("no answer from the API server within {0:?}")]
pub struct RequestTimeoutError(Duration);

/// Layer capping a client's non-watch requests in flight at `max`.
#[derive(Debug, Clone)]
pub struct RequestLimitLayer {
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl RequestLimitLayer {
    /// At most `max` (at least 1) requests other than watches in flight at once, each given
    /// [`REQUEST_TIMEOUT`] for its answer.
    pub fn new(max: usize) -> Self {
        Self::with_timeout(max, REQUEST_TIMEOUT)
    }

    /// At most `max` (at least 1) requests other than watches in flight at once, each given
    /// `timeout` for its answer (its headers) once it holds a permit.
    pub fn with_timeout(max: usize, timeout: Duration) -> Self {
        RequestLimitLayer {
            permits: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            timeout,
        }
    }
}

impl<S> Layer<S> for RequestLimitLayer {
    type Service = RequestLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLimit {
            inner,
            permits: self.permits.clone(),
            timeout: self.timeout,
        }
    }
}

/// The service of [`RequestLimitLayer`].
#[derive(Debug, Clone)]
pub struct RequestLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

/// Whether `request` is a watch (`watch=true` or `watch=1` in its query, as kube-rs and
/// kubectl send them).
fn is_watch<B>(request: &Request<B>) -> bool {
    request.uri().query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| matches!(pair, "watch=true" | "watch=1"))
    })
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<PermitBody<ResBody>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let permits = (!is_watch(&request)).then(|| self.permits.clone());
        let timeout = self.timeout;
        // kube's stack rewrites the URI and headers and opens its trace span now (so traced
        // latency includes the wait), but takes no connection until the future is polled,
        // which is after the permit is held.
        let response = self.inner.call(request);
        Box::pin(async move {
            let Some(permits) = permits else {
                let response = response.await.map_err(Into::into)?;
                return Ok(response.map(|body| PermitBody { body, permit: None }));
            };
            let permit = permits.acquire_owned().await.ok();
            let response = tokio::time::timeout(timeout, response)
                .await
                .map_err(|_| RequestTimeoutError(timeout))?
                .map_err(Into::into)?;
            Ok(response.map(|body| PermitBody { body, permit }))
        })
    }
}

/// A response body holding its request's permit until it has been read to the end (or is
/// dropped).
#[derive(Debug)]
pub struct PermitBody<B> {
    body: B,
    permit: Option<OwnedSemaphorePermit>,
}

impl<B: Body + Unpin> Body for PermitBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) {
            self.permit = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};

    /// A service that counts the requests it is working on (and all it was given), each taking
    /// 20 ms to answer, as a server would, so that concurrent ones overlap.
    #[derive(Clone, Default)]
    struct Counting {
        now: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
        calls: Arc<AtomicUsize>,
    }

    impl Service<Request<()>> for Counting {
        type Response = Response<Full<bytes::Bytes>>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            let (now, most) = (self.now.clone(), self.most.clone());
            let calls = self.calls.clone();
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let working = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(working, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(Response::new(Full::new(bytes::Bytes::from_static(b"ok"))))
            })
        }
    }

    fn request(uri: &str) -> Request<()> {
        Request::builder().uri(uri).body(()).unwrap()
    }

    #[tokio::test]
    async fn requests_beyond_the_cap_wait_and_watches_do_not() {
        let counting = Counting::default();
        let limited = RequestLimitLayer::new(2).layer(counting.clone());
        let gets = (0..8).map(|_| {
            let mut service = limited.clone();
            async move {
                let response = service.call(request("/api/v1/pods")).await.unwrap();
                response.into_body().collect().await.unwrap().to_bytes()
            }
        });
        let bodies = futures::future::join_all(gets).await;
        assert!(bodies.iter().all(|b| b.as_ref() == b"ok"));
        assert_eq!(counting.most.load(Ordering::SeqCst), 2);

        // Two watches hold permits of their own: a third request still runs beside them.
        let counting = Counting::default();
        let limited = RequestLimitLayer::new(1).layer(counting.clone());
        let calls = [
            "/api/v1/pods?watch=true",
            "/api/v1/pods?watch=1&resourceVersion=1",
            "/api/v1/pods",
        ]
        .map(|uri| {
            let mut service = limited.clone();
            async move { service.call(request(uri)).await.map(|_| ()) }
        });
        futures::future::join_all(calls).await;
        assert_eq!(counting.most.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_permit_is_held_until_the_answer_is_read() {
        let counting = Counting::default();
        let mut limited = RequestLimitLayer::new(1).layer(counting.clone());
        let unread = limited.call(request("/api/v1/pods")).await.unwrap();
        let mut second = limited.clone();
        let mut next = tokio::spawn(async move {
            let response = second.call(request("/api/v1/nodes")).await.unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        });
        // Given ten times the inner service's answer time, the second request has not run.
        let waited = tokio::time::timeout(std::time::Duration::from_millis(200), &mut next).await;
        assert!(
            waited.is_err(),
            "the second request waits for the first's body"
        );
        assert_eq!(counting.calls.load(Ordering::SeqCst), 1);
        let body = unread.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.as_ref(), b"ok");
        let second = tokio::time::timeout(std::time::Duration::from_secs(5), next)
            .await
            .expect("the second request runs once the first answer is read")
            .unwrap();
        assert_eq!(second.as_ref(), b"ok");
    }

    #[tokio::test]
    async fn a_request_without_an_answer_in_time_fails_with_the_layer_s_timeout() {
        let timeout = Duration::from_millis(50);
        let mut service = RequestLimitLayer::with_timeout(usize::MAX, timeout).layer(
            tower::service_fn(|_request: Request<()>| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, std::convert::Infallible>(Response::new(()))
            }),
        );
        let started = std::time::Instant::now();
        let request = Request::get("/api/v1/nodes").body(()).unwrap();
        let err = service.call(request).await.unwrap_err();
        assert!(err.is::<RequestTimeoutError>(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn watches_are_told_by_their_query() {
        assert!(is_watch(&request("/api/v1/pods?watch=true")));
        assert!(is_watch(&request("/api/v1/pods?labelSelector=a&watch=1")));
        assert!(!is_watch(&request("/api/v1/pods?watch=false")));
        assert!(!is_watch(&request("/api/v1/pods/watcher")));
    }
}
