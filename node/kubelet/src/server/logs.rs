//! `/containerLogs/<namespace>/<pod>/<container>`: a container's CRI log read back as
//! `kubectl logs` shows it, with follow, previous, tailLines, sinceSeconds/sinceTime,
//! timestamps and limitBytes. Following waits on inotify for more output (and across
//! rotations) and ends when the container's process has exited and its log is drained.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use kube::ResourceExt;
use tokio::io::unix::AsyncFd;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::{Body, ServerState, text};
use baton_runtime::{ContainerRuntime, ContainerState};

/// How the log is to be read (the query of the request, as pods/log names it).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<jiff::Timestamp>,
    pub timestamps: bool,
    pub limit_bytes: Option<usize>,
}

impl LogOptions {
    /// Parses the query; a malformed value is an error naming the parameter.
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut options = LogOptions::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let flag = || matches!(value.as_ref(), "true" | "1");
            let number = |name: &str| {
                value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| {
                        format!("invalid {name} {value:?}: must be a non-negative integer")
                    })
            };
            match key.as_ref() {
                "follow" => options.follow = flag(),
                "previous" => options.previous = flag(),
                "timestamps" => options.timestamps = flag(),
                "tailLines" => options.tail_lines = Some(number("tailLines")? as usize),
                "limitBytes" => options.limit_bytes = Some(number("limitBytes")? as usize),
                "sinceSeconds" => {
                    let seconds = number("sinceSeconds")?;
                    options.since = Some(
                        jiff::Timestamp::now()
                            .checked_sub(jiff::SignedDuration::from_secs(seconds))
                            .unwrap_or(jiff::Timestamp::MIN),
                    );
                }
                "sinceTime" => {
                    options.since = Some(value.parse().map_err(|_| {
                        format!("invalid sinceTime {value:?}: not an RFC 3339 time")
                    })?);
                }
                _ => {}
            }
        }
        Ok(options)
    }
}

/// One record of a CRI log file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub time: &'a str,
    /// Written to stderr (else stdout).
    pub stderr: bool,
    pub partial: bool,
    pub content: &'a [u8],
}

/// Parses `<time> <stream> <P|F> <content>`.
pub(crate) fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    Some(Record {
        time,
        stderr: stream == b"stderr",
        partial: tag == b"P",
        content,
    })
}

/// Appends a record as `kubectl logs` prints it.
fn render(record: &Record<'_>, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(record.time.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(record.content);
    if !record.partial {
        out.push(b'\n');
    }
}

fn wanted(record: &Record<'_>, since: Option<jiff::Timestamp>) -> bool {
    match since {
        None => true,
        Some(since) => record
            .time
            .parse::<jiff::Timestamp>()
            .is_ok_and(|time| time >= since),
    }
}

/// Renders the complete records of `lines` with the options' filters (not follow).
pub(crate) fn render_records(lines: &[Vec<u8>], options: &LogOptions) -> Vec<u8> {
    let records: Vec<Record<'_>> = lines
        .iter()
        .filter_map(|line| parse_record(line))
        .filter(|record| wanted(record, options.since))
        .collect();
    let skip = match options.tail_lines {
        // Lines are whole lines: a run of partial records and its final one count once.
        Some(tail) => {
            let mut full = 0;
            let mut index = records.len();
            while index > 0 {
                if !records[index - 1].partial {
                    if full == tail {
                        break;
                    }
                    full += 1;
                }
                index -= 1;
            }
            index
        }
        None => 0,
    };
    let mut out = Vec::new();
    for record in &records[skip..] {
        render(record, options.timestamps, &mut out);
    }
    if let Some(limit) = options.limit_bytes {
        out.truncate(limit);
    }
    out
}

/// The attempts (`<n>.log`) present in a container's log directory, ascending.
pub(crate) fn attempts(dir: &Path) -> Vec<u32> {
    let mut found: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.split('.').next()?.parse().ok()
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// The files of one attempt's log, oldest first (rotated ones, then the live one).
pub(crate) fn attempt_files(dir: &Path, attempt: u32) -> Vec<PathBuf> {
    let live = dir.join(format!("{attempt}.log"));
    let prefix = format!("{attempt}.log.");
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect();
    rotated.sort();
    rotated.push(live);
    rotated
}

/// The complete lines of a log file's bytes (a last line without its newline is left out:
/// it is still being written).
fn split_lines(data: &[u8]) -> Vec<Vec<u8>> {
    let complete = data
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |end| end + 1);
    data[..complete]
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Serves the request.
pub(crate) async fn container_logs(
    state: &ServerState,
    namespace: &str,
    pod_name: &str,
    container: &str,
    query: Option<&str>,
) -> Response<Body> {
    let options = match LogOptions::parse(query) {
        Ok(options) => options,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let pod = match state.pod_or_not_found(namespace, pod_name) {
        Ok(pod) => pod,
        Err(refusal) => return *refusal,
    };
    let uid = pod.uid().unwrap_or_default();
    let dir = state.container_log_dir(&pod, container);
    let attempts = attempts(&dir);
    let attempt = if options.previous {
        match attempts.len() {
            n if n >= 2 => attempts[n - 2],
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "previous terminated container \"{container}\" in pod \"{pod_name}\" not found"
                    ),
                );
            }
        }
    } else {
        match attempts.last() {
            Some(attempt) => *attempt,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "container \"{container}\" in pod \"{pod_name}\" is waiting to start: ContainerCreating"
                    ),
                );
            }
        }
    };
    let files = attempt_files(&dir, attempt);
    let mut lines = Vec::new();
    // Where the live file was read up to, so that following goes on from exactly there.
    let mut read_to = (0u64, 0u64);
    for file in &files {
        let data = std::fs::read(file).unwrap_or_default();
        if Some(file) == files.last() {
            let inode = std::fs::metadata(file).map(|m| m.ino()).unwrap_or(0);
            read_to = (inode, data.len() as u64);
        }
        lines.extend(split_lines(&data));
    }
    let first = render_records(&lines, &options);
    if !options.follow || options.previous {
        return Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "text/plain")
            .body(http_body_util::Full::new(Bytes::from(first)).boxed())
            .expect("valid response");
    }
    // Follow: what is there now, then what comes, until the container has exited.
    let live = files.last().cloned().unwrap_or_default();
    let id = crate::container_start::container_id(&uid, container, attempt);
    let pid = match state.ctx.runtime.container_status(&id).await {
        Ok(status) if status.state == ContainerState::Running => status.pid,
        _ => None,
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(16);
    let timestamps = options.timestamps;
    let limit = options.limit_bytes;
    tokio::spawn(async move {
        let sent = first.len();
        if !first.is_empty() && sender.send(Bytes::from(first)).await.is_err() {
            return;
        }
        let limit = limit.map(|l| l.saturating_sub(sent));
        if let Err(err) = follow(&live, read_to, pid, timestamps, limit, sender).await {
            tracing::debug!(%err, log = %live.display(), "following a log");
        }
    });
    let frames = ReceiverStream::new(receiver).map(|bytes| Ok(Frame::data(bytes)));
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .expect("valid response")
}

/// Where following a live log begins.
pub(crate) enum TailFrom {
    /// At `offset` of the file with inode `inode` (at the start of a file that replaced it).
    At { inode: u64, offset: u64 },
    /// At the end of the file as it is now.
    End,
}

/// A container attempt's live CRI log being followed: the complete lines appended since the
/// last read, across rotations (the live file renamed and a new one made), with inotify on
/// the log's directory to wait for more. `kubectl logs -f` and `kubectl attach` both read
/// through it.
pub(crate) struct LogTail {
    live: PathBuf,
    file: File,
    inode: u64,
    /// The start of a line not yet complete.
    pending: Vec<u8>,
    notify: AsyncFd<std::os::fd::OwnedFd>,
}

impl LogTail {
    /// Follows `live` from `from`.
    pub(crate) fn open(live: &Path, from: TailFrom) -> std::io::Result<Self> {
        use rustix::fs::inotify;
        let dir = live.parent().unwrap_or(Path::new("/"));
        let notify = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        inotify::add_watch(
            &notify,
            dir,
            inotify::WatchFlags::MODIFY
                | inotify::WatchFlags::CREATE
                | inotify::WatchFlags::MOVED_TO,
        )?;
        let mut file = File::open(live)?;
        let inode = file.metadata()?.ino();
        match from {
            TailFrom::At {
                inode: read_inode,
                offset,
            } if read_inode == inode => {
                file.seek(SeekFrom::Start(offset))?;
            }
            TailFrom::At { .. } => {}
            TailFrom::End => {
                file.seek(SeekFrom::End(0))?;
            }
        }
        Ok(Self {
            live: live.to_path_buf(),
            file,
            inode,
            pending: Vec::new(),
            notify: register(notify)?,
        })
    }

    /// The complete lines appended since the last call (the rest of a rotated file first,
    /// then the new live file's), without their newlines.
    pub(crate) fn read_lines(&mut self) -> std::io::Result<Vec<Vec<u8>>> {
        loop {
            self.file.read_to_end(&mut self.pending)?;
            match std::fs::metadata(&self.live) {
                Ok(now) if now.ino() != self.inode => {
                    self.file = File::open(&self.live)?;
                    self.inode = now.ino();
                }
                _ => break,
            }
        }
        let mut lines = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=end).collect();
            line.pop();
            lines.push(line);
        }
        Ok(lines)
    }

    /// Waits until the log's directory changes (a write, a new file, a rename).
    pub(crate) async fn changed(&self) -> std::io::Result<()> {
        let mut guard = self.notify.readable().await?;
        let mut buffer = [0u8; 4096];
        while rustix::io::read(guard.get_inner(), &mut buffer).is_ok() {}
        guard.clear_ready();
        Ok(())
    }
}

/// Sends the records appended to `live` after what was already sent, until process `pid` has
/// exited (or the client went away, or `limit` bytes were sent).
async fn follow(
    live: &Path,
    (inode, offset): (u64, u64),
    pid: Option<i32>,
    timestamps: bool,
    mut limit: Option<usize>,
    sender: tokio::sync::mpsc::Sender<Bytes>,
) -> std::io::Result<()> {
    let mut tail = LogTail::open(live, TailFrom::At { inode, offset })?;
    let mut exited = pid.is_none();
    let exit = async {
        if let Some(pid) = pid {
            let _ = baton_runtime::wait_for_exit(pid).await;
        }
    };
    tokio::pin!(exit);
    loop {
        let mut out = Vec::new();
        for line in tail.read_lines()? {
            if let Some(record) = parse_record(&line) {
                render(&record, timestamps, &mut out);
            }
        }
        if let Some(left) = limit.as_mut() {
            out.truncate(*left);
            *left -= out.len();
        }
        if !out.is_empty() && sender.send(Bytes::from(out)).await.is_err() {
            return Ok(());
        }
        if limit == Some(0) || exited {
            return Ok(());
        }
        tokio::select! {
            changed = tail.changed() => changed?,
            _ = &mut exit => exited = true,
            _ = sender.closed() => return Ok(()),
        }
    }
}

#[allow(unsafe_code)]
fn register(fd: std::os::fd::OwnedFd) -> std::io::Result<AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the AsyncFd owns the descriptor, so it stays open and the same until dropped.
    unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<Vec<u8>> {
        text.lines().map(|l| l.as_bytes().to_vec()).collect()
    }

    const LOG: &str = "2026-01-01T00:00:01Z stdout F one\n2026-01-01T00:00:02Z stderr F two\n2026-01-01T00:00:03Z stdout P thr\n2026-01-01T00:00:03Z stdout F ee\n2026-01-01T00:00:04Z stdout F four\n";

    #[test]
    fn records_render_as_kubectl_logs_prints_them() {
        let all = render_records(&lines(LOG), &LogOptions::default());
        assert_eq!(String::from_utf8(all).unwrap(), "one\ntwo\nthree\nfour\n");
        let tail = LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(render_records(&lines(LOG), &tail)).unwrap(),
            "three\nfour\n"
        );
        let since = LogOptions {
            since: Some("2026-01-01T00:00:02Z".parse().unwrap()),
            timestamps: true,
            ..Default::default()
        };
        let out = String::from_utf8(render_records(&lines(LOG), &since)).unwrap();
        assert!(out.starts_with("2026-01-01T00:00:02Z two\n"), "{out}");
        let limited = LogOptions {
            limit_bytes: Some(5),
            ..Default::default()
        };
        assert_eq!(render_records(&lines(LOG), &limited), b"one\nt");
    }

    #[test]
    fn options_parse_and_name_bad_values() {
        let options =
            LogOptions::parse(Some("follow=true&tailLines=10&timestamps=1&previous=false"))
                .unwrap();
        assert!(options.follow && options.timestamps && !options.previous);
        assert_eq!(options.tail_lines, Some(10));
        let err = LogOptions::parse(Some("tailLines=-1")).unwrap_err();
        assert!(err.contains("tailLines"), "{err}");
        let err = LogOptions::parse(Some("sinceTime=yesterday")).unwrap_err();
        assert!(err.contains("sinceTime"), "{err}");
    }
}
