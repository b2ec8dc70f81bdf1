//! A CA on disk: its certificate, its key (0600), and the index of what it issued, in a text
//! format a person can read and diff.
//!
//! ```text
//! <dir>/ca.crt      the CA certificate (public)
//! <dir>/ca.key      its private key, mode 0600: offline for a root, CA host only for an intermediate
//! <dir>/root.crt    intermediates only: the root's certificate, for ca-chain.pem
//! <dir>/index.txt   one line per issued certificate
//! <dir>/crlnumber   the last CRL number
//! ```

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use time::OffsetDateTime;

use super::inspect::{CertInfo, rfc3339};
use super::{Ca, PkiError};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const ROOT_CERT: &str = "root.crt";
pub const INDEX: &str = "index.txt";
pub const CRL_NUMBER: &str = "crlnumber";

/// What an issued certificate is for, as recorded in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
    Ca,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
            Self::Ca => "ca",
        }
    }
}

/// The state of an issued certificate. Expiry is computed from `not_after`, never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Valid,
    /// Replaced by a newer certificate for the same name; still cryptographically valid.
    Superseded,
    Revoked {
        at: OffsetDateTime,
        reason: String,
    },
}

/// One line of `index.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub serial: String,
    pub status: Status,
    pub kind: Kind,
    pub not_after: OffsetDateTime,
    pub sha256: String,
    pub names: Vec<String>,
}

impl Entry {
    pub fn from_cert(info: &CertInfo, kind: Kind) -> Self {
        let names = if info.sans.is_empty() {
            vec![info.subject.clone()]
        } else {
            info.sans.clone()
        };
        Self {
            serial: info.serial.clone(),
            status: Status::Valid,
            kind,
            not_after: info.not_after,
            sha256: info.sha256.clone(),
            names,
        }
    }

    /// Valid and not expired.
    pub fn is_live(&self) -> bool {
        self.status == Status::Valid && self.not_after > OffsetDateTime::now_utc()
    }

    /// `valid`, `expired`, `superseded` or `revoked`.
    pub fn state(&self) -> &'static str {
        match self.status {
            Status::Revoked { .. } => "revoked",
            Status::Superseded => "superseded",
            Status::Valid if self.not_after <= OffsetDateTime::now_utc() => "expired",
            Status::Valid => "valid",
        }
    }

    fn parse(line: &str) -> Result<Self, String> {
        let mut serial = None;
        let mut status = None;
        let mut kind = None;
        let mut not_after = None;
        let mut sha256 = None;
        let mut names = None;
        let mut revoked_at = None;
        let mut reason = None;
        for field in line.split_whitespace() {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("{field:?} is not key=value"))?;
            match key {
                "serial" => serial = Some(value.to_owned()),
                "status" => status = Some(value.to_owned()),
                "kind" => {
                    kind = Some(match value {
                        "server" => Kind::Server,
                        "client" => Kind::Client,
                        "ca" => Kind::Ca,
                        other => return Err(format!("unknown kind {other:?}")),
                    })
                }
                "not_after" => not_after = Some(parse_time(value)?),
                "sha256" => sha256 = Some(value.to_owned()),
                "names" => names = Some(value.split(',').map(unescape).collect()),
                "revoked_at" => revoked_at = Some(parse_time(value)?),
                "reason" => reason = Some(value.to_owned()),
                other => return Err(format!("unknown field {other:?}")),
            }
        }
        let missing = |what: &str| format!("missing {what}=");
        let status = match status.as_deref().ok_or_else(|| missing("status"))? {
            "valid" => Status::Valid,
            "superseded" => Status::Superseded,
            "revoked" => Status::Revoked {
                at: revoked_at.ok_or_else(|| missing("revoked_at"))?,
                reason: reason.unwrap_or_else(|| "unspecified".into()),
            },
            other => return Err(format!("unknown status {other:?}")),
        };
        Ok(Self {
            serial: serial.ok_or_else(|| missing("serial"))?,
            status,
            kind: kind.ok_or_else(|| missing("kind"))?,
            not_after: not_after.ok_or_else(|| missing("not_after"))?,
            sha256: sha256.ok_or_else(|| missing("sha256"))?,
            names: names.ok_or_else(|| missing("names"))?,
        })
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match &self.status {
            Status::Valid => "valid",
            Status::Superseded => "superseded",
            Status::Revoked { .. } => "revoked",
        };
        write!(
            f,
            "serial={} status={status} kind={} not_after={} sha256={} names={}",
            self.serial,
            self.kind.as_str(),
            rfc3339(self.not_after),
            self.sha256,
            self.names
                .iter()
                .map(|n| escape(n))
                .collect::<Vec<_>>()
                .join(",")
        )?;
        if let Status::Revoked { at, reason } = &self.status {
            write!(f, " revoked_at={} reason={reason}", rfc3339(*at))?;
        }
        Ok(())
    }
}

/// Names may hold spaces (a CA's subject) or commas: percent-escape what would split a field.
fn escape(name: &str) -> String {
    name.replace('%', "%25")
        .replace(' ', "%20")
        .replace(',', "%2C")
        .replace('=', "%3D")
}

fn unescape(name: &str) -> String {
    name.replace("%20", " ")
        .replace("%2C", ",")
        .replace("%3D", "=")
        .replace("%25", "%")
}

fn parse_time(value: &str) -> Result<OffsetDateTime, String> {
    humantime::parse_rfc3339(value)
        .map(OffsetDateTime::from)
        .map_err(|e| format!("bad time {value:?}: {e}"))
}

/// A CA directory, opened or created.
#[derive(Debug)]
pub struct CaDir {
    pub dir: PathBuf,
    pub ca: Ca,
    pub info: CertInfo,
    pub entries: Vec<Entry>,
}

impl CaDir {
    /// Writes a new CA into `dir`. Refuses when `dir` already holds a CA key.
    pub fn create(dir: &Path, ca: Ca, root_cert_pem: Option<&str>) -> Result<Self, PkiError> {
        fs::create_dir_all(dir).map_err(|e| PkiError::io(dir, e))?;
        // Refuse before writing anything, so a failed create leaves no stray key behind.
        for name in [CA_KEY, CA_CERT, ROOT_CERT, INDEX] {
            if dir.join(name).exists() {
                return Err(PkiError::Exists(dir.join(name)));
            }
        }
        write_new(&dir.join(CA_KEY), ca.key_pem().as_bytes(), 0o600)?;
        write_new(&dir.join(CA_CERT), ca.cert_pem().as_bytes(), 0o644)?;
        if let Some(root) = root_cert_pem {
            write_new(&dir.join(ROOT_CERT), root.as_bytes(), 0o644)?;
        }
        let info = CertInfo::parse(ca.cert()).map_err(|e| PkiError::Invalid {
            path: dir.join(CA_CERT),
            reason: e,
        })?;
        let this = Self {
            dir: dir.to_path_buf(),
            ca,
            info,
            entries: Vec::new(),
        };
        this.save()?;
        Ok(this)
    }

    /// Opens the CA in `dir`: certificate, key and index.
    pub fn open(dir: &Path) -> Result<Self, PkiError> {
        let cert_pem = read_string(&dir.join(CA_CERT))?;
        let key_pem = read_string(&dir.join(CA_KEY))?;
        let ca = Ca::from_pem(&cert_pem, &key_pem)?;
        let info = CertInfo::parse(ca.cert()).map_err(|e| PkiError::Invalid {
            path: dir.join(CA_CERT),
            reason: e,
        })?;
        let index = dir.join(INDEX);
        let text = match fs::read_to_string(&index) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(PkiError::io(&index, e)),
        };
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry = Entry::parse(line).map_err(|e| PkiError::Invalid {
                path: index.clone(),
                reason: format!("line {}: {e}", n + 1),
            })?;
            entries.push(entry);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            ca,
            info,
            entries,
        })
    }

    /// The root's certificate next to an intermediate, if there is one.
    pub fn root_cert_pem(&self) -> Result<Option<String>, PkiError> {
        let path = self.dir.join(ROOT_CERT);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PkiError::io(&path, e)),
        }
    }

    /// Writes the index (atomically).
    pub fn save(&self) -> Result<(), PkiError> {
        let mut text = String::from(
            "# trustgate pki index: one certificate per line; expired is computed from not_after\n",
        );
        for entry in &self.entries {
            text.push_str(&entry.to_string());
            text.push('\n');
        }
        replace_atomic(&self.dir.join(INDEX), text.as_bytes(), 0o644)
    }

    /// Next CRL number, persisted.
    pub fn next_crl_number(&self) -> Result<u64, PkiError> {
        let path = self.dir.join(CRL_NUMBER);
        let last = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| PkiError::Invalid {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(PkiError::io(&path, e)),
        };
        let next = last + 1;
        replace_atomic(&path, format!("{next}\n").as_bytes(), 0o644)?;
        Ok(next)
    }
}

pub fn read_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|e| PkiError::io(path, e))
}

/// Creates `path` with `mode`; never overwrites an existing file.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    set_mode(&mut options, mode);
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::Exists(path.to_path_buf())
        } else {
            PkiError::io(path, e)
        }
    })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| PkiError::io(path, e))
}

/// Replaces `path` atomically: write a temporary file beside it, then rename over it, so a
/// reader sees the old file or the new one, never half of one.
pub fn replace_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    write_new(&temp, contents, mode)?;
    keep_owner(path, &temp);
    fs::rename(&temp, path).map_err(|e| {
        let _ = fs::remove_file(&temp);
        PkiError::io(path, e)
    })
}

/// Gives `new` the owner of the file it replaces, so a renewed key stays readable by the service
/// that read the old one (a container's uid) and renewal needs no `chown` after it. Without the
/// privilege to do so, warns and leaves the new file as it is.
fn keep_owner(old: &Path, new: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = fs::metadata(old) else { return };
        let Ok(mine) = fs::metadata(new) else { return };
        if (meta.uid(), meta.gid()) == (mine.uid(), mine.gid()) {
            return;
        }
        if let Err(e) = std::os::unix::fs::chown(new, Some(meta.uid()), Some(meta.gid())) {
            tracing::warn!(
                file = %old.display(),
                error = %e,
                "cannot keep the replaced file's owner (uid {}); give the new file to the service that reads it",
                meta.uid()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (old, new);
}

fn set_mode(options: &mut OpenOptions, mode: u32) {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, mode);
    #[cfg(not(unix))]
    let _ = (options, mode);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{LeafRequest, Validity};

    #[cfg(unix)]
    #[test]
    fn a_replaced_file_keeps_its_owner() {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: changing a file's owner needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("server.key");
        write_new(&key, b"old", 0o600).unwrap();
        std::os::unix::fs::chown(&key, Some(65532), Some(65532)).unwrap();
        replace_atomic(&key, b"new", 0o600).unwrap();
        let meta = fs::metadata(&key).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65532, 65532));
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::read(&key).unwrap(), b"new");
    }

    #[test]
    fn index_lines_round_trip() {
        let root = Ca::root("Index Root", Validity::days(3)).unwrap();
        let leaf = root.issue(&LeafRequest::server("backend-api", 2)).unwrap();
        let info = CertInfo::parse(&leaf.cert).unwrap();
        let mut entry = Entry::from_cert(&info, Kind::Server);
        let line = entry.to_string();
        assert!(
            line.starts_with(&format!(
                "serial={} status=valid kind=server not_after=",
                leaf.serial
            )),
            "{line}"
        );
        let mut parsed = Entry::parse(&line).unwrap();
        // The index keeps seconds; compare at that precision.
        parsed.not_after = entry.not_after.replace_nanosecond(0).unwrap();
        entry.not_after = entry.not_after.replace_nanosecond(0).unwrap();
        assert_eq!(parsed, entry);
        assert!(entry.is_live());

        entry.status = Status::Revoked {
            at: OffsetDateTime::now_utc(),
            reason: "keyCompromise".into(),
        };
        let line = entry.to_string();
        assert!(line.ends_with("reason=keyCompromise"), "{line}");
        assert_eq!(Entry::parse(&line).unwrap().state(), "revoked");
        assert!(Entry::parse("serial=1 status=bogus").is_err());

        let ca = CertInfo::parse(root.cert()).unwrap();
        let entry = Entry::from_cert(&ca, Kind::Ca);
        assert_eq!(entry.names, ["CN=Index Root"]);
        assert!(entry.to_string().contains("names=CN%3DIndex%20Root"));
        assert_eq!(Entry::parse(&entry.to_string()).unwrap().names, entry.names);
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::root("Store Root", Validity::days(3)).unwrap();
        let store = CaDir::create(dir.path(), ca, None).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(CA_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = Ca::root("Store Root 2", Validity::days(3)).unwrap();
        assert!(matches!(
            CaDir::create(dir.path(), again, None),
            Err(PkiError::Exists(_))
        ));
        let reopened = CaDir::open(dir.path()).unwrap();
        assert_eq!(reopened.info.subject, store.info.subject);
        assert_eq!(reopened.next_crl_number().unwrap(), 1);
        assert_eq!(reopened.next_crl_number().unwrap(), 2);
    }
}
