//! Minimal, dependency-free writer (and reader) for TensorBoard event files.
//!
//! TensorBoard reads `events.out.tfevents.*` files: a sequence of TFRecord
//! records, each holding one serialized `tensorflow.Event` protocol buffer.
//! This module implements exactly the subset needed to log scalars:
//!
//! * TFRecord framing with the masked CRC-32C (Castagnoli) checksums;
//! * hand-written protobuf encoding of `Event { wall_time, step,
//!   file_version, summary }` and `Summary { repeated Value { tag,
//!   simple_value } }`;
//! * [`EventWriter`], which creates a file named the way TensorFlow does and
//!   appends one `Event` per [`EventWriter::add_scalars`] call;
//! * [`read_scalars`], a small independent reader that verifies every
//!   checksum and returns the logged `(step, tag, value)` triples.
//!
//! Values are stored as `f32` (`Summary.Value.simple_value` is a `float`).
//! Non-finite values (NaN, ±inf) are written unchanged; TensorBoard displays
//! them as such.
//!
//! [`TensorBoard`] wraps a training [`Observer`] and logs every step it sees
//! (`cm train-* --tensorboard` writes `RUN/tensorboard/`; watch it live with
//! `tensorboard --logdir RUN/tensorboard`).
//!
//! ```
//! use cm_train::tensorboard::{read_scalars, EventWriter};
//! # fn main() -> std::io::Result<()> {
//! # let dir = tempfile::tempdir()?;
//! let mut w = EventWriter::create(dir.path())?;
//! for step in 0..10 {
//!     let loss = 1.0 / (step as f64 + 1.0);
//!     w.add_scalars(step, &[("loss", loss), ("lr", 1e-4)])?;
//! }
//! w.flush()?;
//! let logged = read_scalars(w.path())?; // Vec<(step, tag, f32 value)>
//! assert_eq!(logged.len(), 20);
//! assert_eq!(logged[2], (1, "loss".to_string(), 0.5));
//! # Ok(())
//! # }
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::observer::{Observer, StepInfo};

/// Largest record payload [`read_scalars`] accepts (64 MiB).
const MAX_RECORD_LEN: u64 = 64 * 1024 * 1024;

/// `file_version` string TensorBoard expects in the first event of a file.
const FILE_VERSION: &str = "brain.Event:2";

// ---------------------------------------------------------------------------
// CRC-32C
// ---------------------------------------------------------------------------

/// Reflected CRC-32C (Castagnoli) polynomial.
const CRC32C_POLY: u32 = 0x82F6_3B78;

/// Byte-wise lookup table for CRC-32C, built at compile time.
const CRC32C_TABLE: [u32; 256] = crc32c_table();

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ CRC32C_POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// Plain CRC-32C of `data`.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masking of a CRC (rotate right by 15, add a constant).
fn mask_crc(crc: u32) -> u32 {
    // == ((crc >> 15) | (crc << 17)).wrapping_add(0xa282ead8)
    crc.rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// Masked CRC-32C of `data`, as stored in TFRecord files.
fn masked_crc32c(data: &[u8]) -> u32 {
    mask_crc(crc32c(data))
}

// ---------------------------------------------------------------------------
// TFRecord framing
// ---------------------------------------------------------------------------

/// Writes one TFRecord: `u64 len`, `u32 masked_crc(len)`, data,
/// `u32 masked_crc(data)`, all little-endian.
fn write_record<W: Write>(w: &mut W, data: &[u8]) -> io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    w.write_all(&len)?;
    w.write_all(&masked_crc32c(&len).to_le_bytes())?;
    w.write_all(data)?;
    w.write_all(&masked_crc32c(data).to_le_bytes())
}

// ---------------------------------------------------------------------------
// Protobuf encoding
// ---------------------------------------------------------------------------

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Field key; all field numbers used here are < 16, so it fits one byte.
fn put_key(buf: &mut Vec<u8>, field: u8, wire: u8) {
    put_varint(buf, u64::from(field) << 3 | u64::from(wire));
}

fn put_bytes(buf: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    put_key(buf, field, WIRE_LEN);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// `Event { wall_time = 1, step = 2, file_version = 3 }`.
fn encode_file_version_event(wall_time: f64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(32);
    put_key(&mut buf, 1, WIRE_FIXED64);
    buf.extend_from_slice(&wall_time.to_le_bytes());
    put_bytes(&mut buf, 3, FILE_VERSION.as_bytes());
    buf
}

/// `Event { wall_time = 1, step = 2, summary = 5 { value = 1 { tag = 1,
/// simple_value = 2 } ... } }`.
fn encode_scalar_event(wall_time: f64, step: i64, scalars: &[(&str, f64)]) -> Vec<u8> {
    let mut summary = Vec::new();
    let mut value = Vec::new();
    for &(tag, v) in scalars {
        value.clear();
        put_bytes(&mut value, 1, tag.as_bytes());
        put_key(&mut value, 2, WIRE_FIXED32);
        value.extend_from_slice(&(v as f32).to_le_bytes());
        put_bytes(&mut summary, 1, &value);
    }
    let mut buf = Vec::with_capacity(summary.len() + 24);
    put_key(&mut buf, 1, WIRE_FIXED64);
    buf.extend_from_slice(&wall_time.to_le_bytes());
    put_key(&mut buf, 2, WIRE_VARINT);
    // int64 is encoded as the two's-complement u64 (negative => 10 bytes).
    put_varint(&mut buf, step as u64);
    put_bytes(&mut buf, 5, &summary);
    buf
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

/// Seconds since the Unix epoch as `f64` (0.0 if the clock is before 1970).
fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Host name from `/etc/hostname`, else `$HOSTNAME`, else `"localhost"`,
/// restricted to `[A-Za-z0-9._-]` (other characters become `_`).
fn hostname() -> String {
    let raw = fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_string());
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Appends scalar summaries to a new TensorBoard event file.
///
/// Writes are buffered; call [`EventWriter::flush`] to make them visible to
/// a running TensorBoard. The buffer is also flushed when the writer is
/// dropped (errors are ignored there; call `flush` to observe them).
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    writer: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir` (and its parents) if needed and a new event file in it,
    /// named `events.out.tfevents.{unix_seconds}.{hostname}.{pid}.{n}` with
    /// `n = 0`, or the next free number if that name already exists (an
    /// existing file is never overwritten). The `file_version` event
    /// (`"brain.Event:2"`) is written first.
    ///
    /// # Errors
    ///
    /// Any I/O error from creating the directory or the file, or from
    /// writing the first record.
    pub fn create(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let prefix = format!(
            "events.out.tfevents.{secs:010}.{}.{}",
            hostname(),
            std::process::id()
        );
        let mut n: u32 = 0;
        let (path, file) = loop {
            let path = dir.join(format!("{prefix}.{n}"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e),
            }
        };
        let mut writer = BufWriter::new(file);
        write_record(&mut writer, &encode_file_version_event(now_secs()))?;
        Ok(Self { path, writer })
    }

    /// Appends one `Event` at `step` (wall time = now) holding one
    /// `simple_value` per `(tag, value)` pair, in the given order.
    ///
    /// Values are converted to `f32` (finite values beyond the `f32` range
    /// become ±inf); NaN and infinities are written as they are. An empty
    /// `scalars` slice writes nothing.
    ///
    /// # Errors
    ///
    /// Any I/O error from writing (usually only surfaced once the buffer
    /// fills or on [`EventWriter::flush`]).
    pub fn add_scalars(&mut self, step: i64, scalars: &[(&str, f64)]) -> io::Result<()> {
        if scalars.is_empty() {
            return Ok(());
        }
        let event = encode_scalar_event(now_secs(), step, scalars);
        write_record(&mut self.writer, &event)
    }

    /// Flushes buffered records to the file (not necessarily to disk).
    ///
    /// # Errors
    ///
    /// Any I/O error from writing the buffered data.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    /// Path of the event file being written.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.writer.flush();
    }
}

// ---------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------

/// Reads until `buf` is full or EOF; returns the number of bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        if i == 9 && b > 1 {
            return Err("varint overflows 64 bits".into());
        }
        v |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn get_slice<'a>(buf: &'a [u8], pos: &mut usize, len: u64) -> Result<&'a [u8], String> {
    let rest = buf.len() - *pos;
    if len > rest as u64 {
        return Err(format!("field of {len} bytes overruns its message"));
    }
    let s = &buf[*pos..*pos + len as usize];
    *pos += len as usize;
    Ok(s)
}

/// One decoded protobuf field: number and payload.
enum Field<'a> {
    Varint(u64),
    Fixed64,
    Len(&'a [u8]),
    Fixed32([u8; 4]),
}

/// Decodes the next field at `pos` (any wire type except deprecated groups).
fn next_field<'a>(buf: &'a [u8], pos: &mut usize) -> Result<(u64, Field<'a>), String> {
    let key = get_varint(buf, pos)?;
    let number = key >> 3;
    if number == 0 {
        return Err("invalid field number 0".into());
    }
    let field = match (key & 7) as u8 {
        WIRE_VARINT => Field::Varint(get_varint(buf, pos)?),
        WIRE_FIXED64 => {
            get_slice(buf, pos, 8)?;
            Field::Fixed64
        }
        WIRE_LEN => {
            let len = get_varint(buf, pos)?;
            Field::Len(get_slice(buf, pos, len)?)
        }
        WIRE_FIXED32 => {
            let mut b = [0u8; 4];
            b.copy_from_slice(get_slice(buf, pos, 4)?);
            Field::Fixed32(b)
        }
        w => return Err(format!("unsupported wire type {w} (field {number})")),
    };
    Ok((number, field))
}

/// Decodes an `Event`, appending `(step, tag, simple_value)` for each summary
/// value that has a `simple_value`. Other fields are skipped; a known field
/// number with an unexpected wire type is skipped like an unknown field.
fn decode_event(buf: &[u8], out: &mut Vec<(i64, String, f32)>) -> Result<(), String> {
    let mut step: i64 = 0;
    let mut values: Vec<(String, f32)> = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        match next_field(buf, &mut pos)? {
            (2, Field::Varint(v)) => step = v as i64,
            (5, Field::Len(summary)) => decode_summary(summary, &mut values)?,
            _ => {}
        }
    }
    out.extend(values.into_iter().map(|(tag, v)| (step, tag, v)));
    Ok(())
}

fn decode_summary(buf: &[u8], values: &mut Vec<(String, f32)>) -> Result<(), String> {
    let mut pos = 0;
    while pos < buf.len() {
        if let (1, Field::Len(value)) = next_field(buf, &mut pos)? {
            let mut tag = String::new();
            let mut simple = None;
            let mut vpos = 0;
            while vpos < value.len() {
                match next_field(value, &mut vpos)? {
                    (1, Field::Len(t)) => {
                        tag = std::str::from_utf8(t)
                            .map_err(|_| "summary tag is not UTF-8".to_string())?
                            .to_string();
                    }
                    (2, Field::Fixed32(b)) => simple = Some(f32::from_le_bytes(b)),
                    _ => {}
                }
            }
            if let Some(v) = simple {
                values.push((tag, v));
            }
        }
    }
    Ok(())
}

/// Reads every scalar (`simple_value`) from a TensorBoard event file as
/// `(step, tag, value)`, in file order.
///
/// Both CRCs of every record are checked. Errors (kind `InvalidData`, or
/// `UnexpectedEof` for a truncated file) name the 0-based record index.
/// Records longer than 64 MiB are refused without allocating. Summary
/// values of other kinds (images, histograms, tensors) are skipped.
///
/// # Errors
///
/// I/O errors from opening or reading `path`; `InvalidData` for a CRC
/// mismatch, an oversized record or malformed protobuf; `UnexpectedEof` for
/// a truncated record. The message names the file and the record index.
pub fn read_scalars(path: &Path) -> io::Result<Vec<(i64, String, f32)>> {
    let mut r = BufReader::new(File::open(path)?);
    let mut out = Vec::new();
    let bad = |index: usize, msg: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: record {index}: {msg}", path.display()),
        )
    };
    let truncated = |index: usize, what: &str| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{}: record {index}: truncated {what}", path.display()),
        )
    };
    for index in 0.. {
        let mut header = [0u8; 12];
        match read_full(&mut r, &mut header)? {
            0 => break,
            12 => {}
            _ => return Err(truncated(index, "header")),
        }
        let (len_bytes, crc_bytes) = header.split_at(8);
        let mut len_arr = [0u8; 8];
        len_arr.copy_from_slice(len_bytes);
        let mut crc_arr = [0u8; 4];
        crc_arr.copy_from_slice(crc_bytes);
        if u32::from_le_bytes(crc_arr) != masked_crc32c(&len_arr) {
            return Err(bad(index, "length CRC mismatch".into()));
        }
        let len = u64::from_le_bytes(len_arr);
        if len > MAX_RECORD_LEN {
            return Err(bad(
                index,
                format!("record length {len} exceeds the {MAX_RECORD_LEN}-byte limit"),
            ));
        }
        let mut data = vec![0u8; len as usize + 4];
        if read_full(&mut r, &mut data)? != data.len() {
            return Err(truncated(index, "data"));
        }
        let (payload, crc_bytes) = data.split_at(len as usize);
        crc_arr.copy_from_slice(crc_bytes);
        if u32::from_le_bytes(crc_arr) != masked_crc32c(payload) {
            return Err(bad(index, "data CRC mismatch".into()));
        }
        decode_event(payload, &mut out).map_err(|msg| bad(index, msg))?;
    }
    Ok(out)
}

/// An [`Observer`] that writes every step's loss, learning rate, gradient
/// norm and speed to TensorBoard event files (tags `train/loss`,
/// `train/lr`, `train/grad_norm`, `train/steps_per_s`), then passes
/// everything on to `inner`. Each training stage gets its own subfolder,
/// which TensorBoard shows as its own run (`DIR/edm-teacher`,
/// `DIR/consistency-distillation`, ...; [`Observer::on_stage`]); each session
/// writes a new file there, and a resumed run's steps continue where its
/// checkpoint left off (TensorBoard drops the orphaned steps of the
/// interrupted session). A write failure is reported once through `inner`
/// and stops the logging, not the run.
pub struct TensorBoard<O> {
    dir: PathBuf,
    writer: Option<EventWriter>,
    failed: bool,
    inner: O,
}

impl<O: Observer> TensorBoard<O> {
    /// Logs into `dir` (created now, so an unwritable folder fails before
    /// training).
    pub fn new(dir: &Path, inner: O) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(TensorBoard {
            dir: dir.to_path_buf(),
            writer: None,
            failed: false,
            inner,
        })
    }

    /// The event file being written, once a stage has started.
    pub fn path(&self) -> Option<&Path> {
        self.writer.as_ref().map(|w| w.path())
    }

    /// The wrapped observer.
    pub fn into_inner(self) -> O {
        self.inner
    }

    fn open(&mut self, dir: PathBuf) {
        match EventWriter::create(&dir) {
            Ok(w) => self.writer = Some(w),
            Err(e) => self.fail(&dir, e),
        }
    }

    fn fail(&mut self, path: &Path, e: io::Error) {
        self.writer = None;
        self.failed = true;
        self.inner.on_message(&format!(
            "tensorboard: cannot write {} ({e}); logging stopped",
            path.display()
        ));
    }

    fn write(&mut self, step: u64, scalars: &[(&str, f64)]) {
        if self.writer.is_none() && !self.failed {
            // No stage was announced: log into the folder itself.
            self.open(self.dir.clone());
        }
        let Some(w) = &mut self.writer else { return };
        // Flushing every logged step keeps the file live for `tensorboard`;
        // steps are logged every `log_every` updates, so this is cheap.
        let result = w
            .add_scalars(step.min(i64::MAX as u64) as i64, scalars)
            .and_then(|()| w.flush());
        if let Err(e) = result {
            let path = w.path().to_path_buf();
            self.fail(&path, e);
        }
    }
}

impl<O: Observer> Observer for TensorBoard<O> {
    fn on_stage(&mut self, name: &str) {
        if !self.failed {
            let dir = self.dir.join(name);
            self.open(dir);
        }
        self.inner.on_stage(name);
    }

    fn on_start(&mut self, step: u64, total: u64) {
        self.inner.on_start(step, total);
    }

    fn on_step(&mut self, info: &StepInfo) {
        self.write(
            info.step,
            &[
                ("train/loss", info.loss),
                ("train/lr", info.lr),
                ("train/grad_norm", info.grad_norm),
                ("train/steps_per_s", info.steps_per_s),
            ],
        );
        self.inner.on_step(info);
    }

    fn on_message(&mut self, message: &str) {
        self.inner.on_message(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unique temporary directory removed on drop (std-only `tempfile`).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "tbwriter-test-{name}-{}-{nanos}",
                std::process::id()
            ));
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn varint(v: u64) -> Vec<u8> {
        let mut b = Vec::new();
        put_varint(&mut b, v);
        b
    }

    fn write_sample(dir: &Path) -> PathBuf {
        let mut w = EventWriter::create(dir).unwrap();
        for step in 0..5 {
            let s = step as f64;
            w.add_scalars(step, &[("loss", 1.0 / (s + 1.0)), ("lr", 0.1 * s)])
                .unwrap();
        }
        w.flush().unwrap();
        w.path().to_path_buf()
    }

    #[test]
    fn crc32c_check_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43); // RFC 3720 B.4
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn crc_masking() {
        let crc: u32 = 0x1234_5678;
        let expected = crc.rotate_right(15).wrapping_add(0xA282_EAD8);
        assert_eq!(mask_crc(crc), expected);
        assert_eq!(mask_crc(crc), 0x4F73_0F40);
        assert_eq!(masked_crc32c(b"123456789"), mask_crc(0xE306_9283));
    }

    #[test]
    fn varint_encoding() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(1), [0x01]);
        assert_eq!(varint(127), [0x7F]);
        assert_eq!(varint(128), [0x80, 0x01]);
        assert_eq!(varint(300), [0xAC, 0x02]);
        assert_eq!(
            varint(u64::MAX),
            [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]
        );
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            let b = varint(v);
            let mut pos = 0;
            assert_eq!(get_varint(&b, &mut pos), Ok(v));
            assert_eq!(pos, b.len());
        }
    }

    #[test]
    fn fixed_event_bytes() {
        let wall = 1.5f64; // 0x3FF8_0000_0000_0000
        let got = encode_scalar_event(wall, 300, &[("loss", 0.5)]);
        let value = [
            0x0A, 4, b'l', b'o', b's', b's', // tag = "loss"
            0x15, 0x00, 0x00, 0x00, 0x3F, // simple_value = 0.5f32
        ];
        let mut expected = vec![0x09, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F]; // wall_time
        expected.extend_from_slice(&[0x10, 0xAC, 0x02]); // step = 300
        expected.extend_from_slice(&[0x2A, 13, 0x0A, 11]); // summary { value {
        expected.extend_from_slice(&value);
        assert_eq!(got, expected);

        let fv = encode_file_version_event(wall);
        let mut expected_fv = vec![0x09, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F, 0x1A, 13];
        expected_fv.extend_from_slice(b"brain.Event:2");
        assert_eq!(fv, expected_fv);

        // Framing of the scalar event.
        let mut rec = Vec::new();
        write_record(&mut rec, &got).unwrap();
        let len = (got.len() as u64).to_le_bytes();
        assert_eq!(&rec[..8], &len);
        assert_eq!(&rec[8..12], &masked_crc32c(&len).to_le_bytes());
        assert_eq!(&rec[12..12 + got.len()], &got[..]);
        assert_eq!(&rec[12 + got.len()..], &masked_crc32c(&got).to_le_bytes());
    }

    #[test]
    fn round_trip() {
        let tmp = TempDir::new("roundtrip");
        let path = write_sample(&tmp.0);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        assert!(
            name.ends_with(&format!(".{}.0", std::process::id())),
            "{name}"
        );

        let got = read_scalars(&path).unwrap();
        let mut expected = Vec::new();
        for step in 0..5i64 {
            let s = step as f64;
            expected.push((step, "loss".to_string(), (1.0 / (s + 1.0)) as f32));
            expected.push((step, "lr".to_string(), (0.1 * s) as f32));
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn negative_step_and_non_finite() {
        let tmp = TempDir::new("nonfinite");
        let mut w = EventWriter::create(&tmp.0).unwrap();
        w.add_scalars(-3, &[("a", f64::NAN), ("b", f64::INFINITY)])
            .unwrap();
        w.add_scalars(i64::MAX, &[("c", -2.0)]).unwrap();
        w.add_scalars(7, &[]).unwrap();
        drop(w); // flush on drop
        let path = fs::read_dir(&tmp.0)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let got = read_scalars(&path).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].0, got[0].1.as_str()), (-3, "a"));
        assert!(got[0].2.is_nan());
        assert_eq!(got[1], (-3, "b".to_string(), f32::INFINITY));
        assert_eq!(got[2], (i64::MAX, "c".to_string(), -2.0));
    }

    #[test]
    fn second_writer_does_not_overwrite() {
        let tmp = TempDir::new("twice");
        let a = EventWriter::create(&tmp.0).unwrap();
        let b = EventWriter::create(&tmp.0).unwrap();
        assert_ne!(a.path(), b.path());
    }

    #[test]
    fn flipped_byte_is_detected() {
        let tmp = TempDir::new("flip");
        let path = write_sample(&tmp.0);
        let orig = fs::read(&path).unwrap();
        // Flip one byte in each region: length, length CRC, data, data CRC
        // of the second record (index 1), and somewhere in the last record.
        let first_len = u64::from_le_bytes(orig[..8].try_into().unwrap()) as usize;
        let second = first_len + 16;
        for at in [0, second, second + 9, second + 14, orig.len() - 1] {
            let mut bytes = orig.clone();
            bytes[at] ^= 0x01;
            fs::write(&path, &bytes).unwrap();
            let err = read_scalars(&path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "byte {at}: {err}");
            assert!(err.to_string().contains("CRC mismatch"), "{err}");
        }
        let mut bytes = orig.clone();
        bytes[second + 14] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let err = read_scalars(&path).unwrap_err().to_string();
        assert!(err.contains("record 1:"), "{err}");
    }

    #[test]
    fn truncated_file_is_detected() {
        let tmp = TempDir::new("trunc");
        let path = write_sample(&tmp.0);
        let orig = fs::read(&path).unwrap();
        for cut in [1, 4, 11, 20] {
            fs::write(&path, &orig[..orig.len() - cut]).unwrap();
            let err = read_scalars(&path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
            assert!(err.to_string().contains("record 5:"), "{err}");
        }
        // Cut inside the header of record 1.
        let first_len = u64::from_le_bytes(orig[..8].try_into().unwrap()) as usize;
        fs::write(&path, &orig[..first_len + 16 + 5]).unwrap();
        let err = read_scalars(&path).unwrap_err();
        assert!(
            err.to_string().contains("record 1: truncated header"),
            "{err}"
        );
    }

    #[test]
    fn oversized_record_is_refused() {
        let tmp = TempDir::new("huge");
        let path = tmp.0.join("events.out.tfevents.huge");
        let len = (MAX_RECORD_LEN + 1).to_le_bytes();
        let mut bytes = len.to_vec();
        bytes.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let err = read_scalars(&path).unwrap_err().to_string();
        assert!(err.contains("record 0:") && err.contains("limit"), "{err}");
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // Event with unknown fields of every wire type around a summary.
        let mut ev = Vec::new();
        put_key(&mut ev, 9, WIRE_VARINT);
        put_varint(&mut ev, u64::MAX);
        put_key(&mut ev, 10, WIRE_FIXED64);
        ev.extend_from_slice(&[7; 8]);
        put_key(&mut ev, 11, WIRE_FIXED32);
        ev.extend_from_slice(&[7; 4]);
        put_bytes(&mut ev, 12, b"ignored");
        ev.extend(encode_scalar_event(0.0, 4, &[("x", 2.0)]));
        let tmp = TempDir::new("unknown");
        let path = tmp.0.join("events.out.tfevents.unknown");
        let mut file = Vec::new();
        write_record(&mut file, &ev).unwrap();
        fs::write(&path, &file).unwrap();
        assert_eq!(read_scalars(&path).unwrap(), [(4, "x".to_string(), 2.0)]);
    }
}
