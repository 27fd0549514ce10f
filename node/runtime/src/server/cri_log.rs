//! A container's log file in the CRI format the kubelet reads back for `kubectl logs`:
//! `<RFC 3339 time> <stdout|stderr> <F|P> <text>\n`, one record per line, `P` marking a piece of
//! a line longer than [`MAX_LINE`], with size-based rotation (the live file is renamed
//! `<name>.<YYYYMMDD-HHMMSS>` and the oldest rotated files beyond the limit are removed).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Longest line written as one record; longer ones are cut into `P` records.
pub(crate) const MAX_LINE: usize = 16 * 1024;

/// Which output a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Writes one container's records into its log file.
#[derive(Debug)]
pub(crate) struct CriLogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
    /// Bytes of an unfinished line, per stream.
    pending: [Vec<u8>; 2],
}

impl CriLogWriter {
    /// Opens (appending to) the log file at `path`, creating its directory.
    pub(crate) fn open(path: &Path, max_size: u64, max_files: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            max_size,
            max_files: max_files.max(1),
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Records output of `stream`: every finished line, and pieces of an unfinished one that
    /// grew past [`MAX_LINE`].
    pub(crate) fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let index = stream as usize;
        let mut rest = data;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut self.pending[index]);
            line.extend_from_slice(&rest[..end]);
            self.write_line(stream, &line)?;
            rest = &rest[end + 1..];
        }
        self.pending[index].extend_from_slice(rest);
        while self.pending[index].len() >= MAX_LINE {
            let piece: Vec<u8> = self.pending[index].drain(..MAX_LINE).collect();
            self.write_record(stream, b'P', &piece)?;
        }
        Ok(())
    }

    /// Writes what is left of an unfinished line of `stream` (at its end).
    pub(crate) fn finish(&mut self, stream: Stream) -> io::Result<()> {
        let line = std::mem::take(&mut self.pending[stream as usize]);
        if line.is_empty() {
            return Ok(());
        }
        self.write_line(stream, &line)
    }

    fn write_line(&mut self, stream: Stream, mut line: &[u8]) -> io::Result<()> {
        while line.len() > MAX_LINE {
            self.write_record(stream, b'P', &line[..MAX_LINE])?;
            line = &line[MAX_LINE..];
        }
        self.write_record(stream, b'F', line)
    }

    fn write_record(&mut self, stream: Stream, tag: u8, text: &[u8]) -> io::Result<()> {
        let now = jiff::Timestamp::now();
        let mut record = Vec::with_capacity(text.len() + 48);
        write!(record, "{now} {} ", stream.name())?;
        record.push(tag);
        record.push(b' ');
        record.extend_from_slice(text);
        record.push(b'\n');
        if self.max_size > 0 && self.size > 0 && self.size + record.len() as u64 > self.max_size {
            self.rotate(now)?;
        }
        self.file.write_all(&record)?;
        self.size += record.len() as u64;
        Ok(())
    }

    /// Renames the live file aside and starts a new one, keeping `max_files - 1` rotated files.
    fn rotate(&mut self, now: jiff::Timestamp) -> io::Result<()> {
        let stamp = now.strftime("%Y%m%d-%H%M%S%.f").to_string();
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let rotated = self.path.with_file_name(format!("{name}.{stamp}"));
        fs::rename(&self.path, &rotated)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        let mut old = rotated_files(&self.path)?;
        old.sort();
        let keep = self.max_files as usize - 1;
        let excess = old.len().saturating_sub(keep);
        for path in old.into_iter().take(excess) {
            fs::remove_file(path)?;
        }
        Ok(())
    }
}

/// The rotated files of the log at `path`, in no particular order.
pub(crate) fn rotated_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let prefix = format!("{name}.");
    let Some(dir) = path.parent() else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            found.push(entry.path());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(path: &Path) -> Vec<(String, String, String)> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| {
                let mut parts = line.splitn(4, ' ');
                let time = parts.next().unwrap();
                assert!(time.parse::<jiff::Timestamp>().is_ok(), "time {time:?}");
                (
                    parts.next().unwrap().to_owned(),
                    parts.next().unwrap().to_owned(),
                    parts.next().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn lines_become_records_and_long_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let mut log = CriLogWriter::open(&path, 0, 5).unwrap();
        log.write(Stream::Stdout, b"hello\nwor").unwrap();
        log.write(Stream::Stderr, b"oops\n").unwrap();
        log.write(Stream::Stdout, b"ld\n\n").unwrap();
        let long = vec![b'x'; MAX_LINE + 10];
        log.write(Stream::Stdout, &long).unwrap();
        log.write(Stream::Stdout, b"\nend").unwrap();
        log.finish(Stream::Stdout).unwrap();
        let got = records(&path);
        let want = [
            ("stdout", "F", "hello".to_owned()),
            ("stderr", "F", "oops".to_owned()),
            ("stdout", "F", "world".to_owned()),
            ("stdout", "F", String::new()),
            ("stdout", "P", "x".repeat(MAX_LINE)),
            ("stdout", "F", "x".repeat(10)),
            ("stdout", "F", "end".to_owned()),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (got, want) in got.iter().zip(want) {
            assert_eq!(
                (got.0.as_str(), got.1.as_str(), got.2.clone()),
                (want.0, want.1, want.2)
            );
        }
    }

    #[test]
    fn rotation_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = CriLogWriter::open(&path, 200, 3).unwrap();
        for i in 0..40 {
            log.write(Stream::Stdout, format!("line {i:03}\n").as_bytes())
                .unwrap();
        }
        let rotated = rotated_files(&path).unwrap();
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        assert!(fs::metadata(&path).unwrap().len() <= 200);
        let live = records(&path);
        assert_eq!(live.last().unwrap().2, "line 039");
        // Nothing was lost between the newest rotated file and the live one.
        let mut newest = rotated.clone();
        newest.sort();
        let before = records(newest.last().unwrap());
        let last_before: u32 = before.last().unwrap().2[5..].parse().unwrap();
        let first_live: u32 = live[0].2[5..].parse().unwrap();
        assert_eq!(last_before + 1, first_live);
    }
}
