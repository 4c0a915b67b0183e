//! mongod's `failCommand` fail point, as process-wide state and pure
//! functions over it: `configureFailPoint` sets it, and for every command
//! the session asks "does this command fail, and how" from (state, command
//! name, the client's application name). Nothing here does I/O or keeps
//! time; the act step carries out the answer (close, block, error reply).
//!
//! The rules are mongod's (`FailPoint::parseBSON`, `_slowShouldFailOpenBlock`,
//! `CommandHelpers::shouldActivateFailCommandFailPoint` and
//! `evaluateFailCommandFailPoint`):
//!
//! - a command matches when its name (or an alias: `hello`/`isMaster`/
//!   `ismaster`, ...) is in `data.failCommands` (or `data.failAllCommands`
//!   is set), `data.appName`, when given, equals the application name the
//!   connection sent in its hello, and it is not `configureFailPoint`;
//! - before a command runs, the fail point is evaluated for matching
//!   commands when `data` has `closeConnection`, `blockConnection` or
//!   `errorCode`; after a write the proxy relayed, it is evaluated again for
//!   `writeConcernError`, as mongod does after running a command that takes
//!   a write concern;
//! - `mode` counts only evaluations of matching commands: `{times: n}`
//!   fires n times (at least once, as mongod's counter does) and then turns
//!   itself off, `{skip: n}` lets n through and then fires every time;
//! - when it fires: `blockConnection` waits `blockTimeMS` first, then
//!   `closeConnection` closes without a reply, else `errorCode` answers
//!   `{ok: 0, code, codeName, errmsg: "Failing command via 'failCommand'
//!   failpoint"}` (`errorCode: 0` lets the command run, as on mongod), else
//!   the command runs; `errorLabels` replaces the labels the error would
//!   otherwise get (`RetryableWriteError` on a retryable write).

use std::time::Duration;

use bson::raw::{cstr, RawBsonRef};
use bson::{RawArrayBuf, RawBson, RawDocument, RawDocumentBuf};

use crate::errors::MongoError;

/// The one fail point the proxy has.
pub const FAIL_COMMAND: &str = "failCommand";

/// mongod's errmsg for an injected error.
pub const FAILED_MESSAGE: &str = "Failing command via 'failCommand' failpoint";

/// The label drivers look for before retrying a write.
const RETRYABLE_WRITE_ERROR: &str = "RetryableWriteError";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    #[default]
    Off,
    AlwaysOn,
    /// Evaluations left before it turns itself off.
    Times(i64),
    /// Matching commands still to let through.
    Skip(i64),
}

/// `data` as mongod reads it: a field of the wrong type counts as absent.
#[derive(Debug, Clone, Default)]
struct Data {
    fail_commands: Vec<String>,
    fail_all: bool,
    /// `Some("")` when `appName` is there but not a string: mongod then
    /// compares against the empty string.
    app_name: Option<String>,
    close_connection: bool,
    /// `blockConnection: true`: the wait, or why `blockTimeMS` is unusable.
    block: Option<Result<u64, &'static str>>,
    error_code: Option<i32>,
    error_labels: Option<Vec<String>>,
    write_concern_error: Option<RawBson>,
}

/// The process's fail points (mongod's registry, with its one member here).
#[derive(Debug, Default)]
pub struct FailPoints {
    mode: Mode,
    data: Data,
    /// mongod's `timesEntered`: firings since start, returned as `count`.
    times_entered: i64,
}

/// What happens to a command the fail point fired on.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    /// Wait this long first (`blockConnection`).
    pub block: Option<Duration>,
    pub then: Then,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Then {
    /// Close the client's connection without a reply.
    Close,
    /// Answer with this error document instead of running the command.
    Reply(RawDocumentBuf),
    /// Run the command as usual (only blocked).
    Proceed,
}

/// A `writeConcernError` to add to a write's successful reply.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteConcernFault {
    write_concern_error: RawBson,
    labels: Option<Vec<String>>,
    retryable_write: bool,
}

impl FailPoints {
    /// Runs `configureFailPoint`: sets the named fail point and returns
    /// mongod's reply, `{count: <times entered before>, ok: 1}`.
    pub fn configure(&mut self, body: &RawDocument) -> Result<RawDocumentBuf, MongoError> {
        let name = match body.iter().next() {
            Some(Ok((_, RawBsonRef::String(s)))) => s,
            _ => "",
        };
        if name != FAIL_COMMAND {
            return Err(MongoError::with_code(
                266,
                "FailPointSetFailed",
                format!("{name} not found"),
            ));
        }
        let (mode, data) = parse(body)?;
        self.mode = mode;
        self.data = data;
        let mut reply = RawDocumentBuf::new();
        reply.append(cstr!("count"), self.times_entered);
        reply.append(cstr!("ok"), 1.0);
        Ok(reply)
    }

    /// Turns the fail point off (test commands switched off by a reload).
    pub fn clear(&mut self) {
        self.mode = Mode::Off;
        self.data = Data::default();
    }

    /// The current mode, for the log line `configureFailPoint` writes.
    pub fn describe(&self) -> String {
        match self.mode {
            Mode::Off => "off".into(),
            Mode::AlwaysOn => "alwaysOn".into(),
            Mode::Times(n) => format!("{{times: {n}}}"),
            Mode::Skip(n) => format!("{{skip: {n}}}"),
        }
    }

    /// Before a command runs: whether the fail point fires on it, and how.
    /// `retryable_write` decides the default `RetryableWriteError` label.
    pub fn before(
        &mut self,
        command: &str,
        app_name: Option<&str>,
        retryable_write: bool,
    ) -> Option<Fired> {
        let d = &self.data;
        let acts = d.close_connection || d.block.is_some() || d.error_code.is_some();
        if !acts || !self.matches(command, app_name) || !self.enter() {
            return None;
        }
        let d = &self.data;
        let labels = d.error_labels.as_deref();
        let block = match d.block {
            None => None,
            Some(Ok(ms)) => Some(Duration::from_millis(ms)),
            Some(Err(why)) => {
                let reply = error_reply(72, why, labels, retryable_write);
                return Some(Fired {
                    block: None,
                    then: Then::Reply(reply),
                });
            }
        };
        let then = match d.error_code {
            _ if d.close_connection => Then::Close,
            // mongod raises Status(errorCode): code 0 is OK, so the command runs.
            Some(code) if code != 0 => {
                Then::Reply(error_reply(code, FAILED_MESSAGE, labels, retryable_write))
            }
            _ => Then::Proceed,
        };
        Some(Fired { block, then })
    }

    /// Whether [`FailPoints::after_write`] could fire for this command; it
    /// changes nothing, so the relay may read the reply whole only then.
    pub fn wants_write_concern_error(&self, command: &str, app_name: Option<&str>) -> bool {
        self.mode != Mode::Off
            && self.data.write_concern_error.is_some()
            && self.matches(command, app_name)
    }

    /// After a relayed command answered: the `writeConcernError` to add.
    pub fn after_write(
        &mut self,
        command: &str,
        app_name: Option<&str>,
        retryable_write: bool,
    ) -> Option<WriteConcernFault> {
        if !self.wants_write_concern_error(command, app_name) || !self.enter() {
            return None;
        }
        Some(WriteConcernFault {
            write_concern_error: self.data.write_concern_error.clone()?,
            labels: self.data.error_labels.clone(),
            retryable_write,
        })
    }

    fn matches(&self, command: &str, app_name: Option<&str>) -> bool {
        if self.mode == Mode::Off || command == "configureFailPoint" {
            return false;
        }
        let d = &self.data;
        if d.app_name
            .as_deref()
            .is_some_and(|want| want != app_name.unwrap_or(""))
        {
            return false;
        }
        d.fail_all || d.fail_commands.iter().any(|c| same_command(c, command))
    }

    /// Counts one evaluation of a matching command against the mode;
    /// true when the fail point fires.
    fn enter(&mut self) -> bool {
        let fires = match self.mode {
            Mode::Off => false,
            Mode::AlwaysOn => true,
            Mode::Times(n) => {
                self.mode = if n - 1 <= 0 {
                    Mode::Off
                } else {
                    Mode::Times(n - 1)
                };
                true
            }
            Mode::Skip(n) if n <= 0 => true,
            Mode::Skip(n) => {
                self.mode = Mode::Skip(n - 1);
                false
            }
        };
        if fires {
            self.times_entered = self.times_entered.saturating_add(1);
        }
        fires
    }
}

impl WriteConcernFault {
    /// The write's reply with the fault's `writeConcernError` (and labels)
    /// in place of any the backend sent.
    pub fn apply(&self, reply: &RawDocument) -> RawDocumentBuf {
        let code = match &self.write_concern_error {
            RawBson::Document(d) => d
                .get("code")
                .ok()
                .flatten()
                .and_then(crate::wire::bson_integer),
            _ => None,
        };
        let labels = match &self.labels {
            Some(l) => l.clone(),
            None => default_labels(
                code.and_then(|c| i32::try_from(c).ok()).unwrap_or(0),
                self.retryable_write,
            ),
        };
        let mut doc = RawDocumentBuf::new();
        for (key, value) in reply.iter().flatten() {
            if key.as_str() == "writeConcernError"
                || (key.as_str() == "errorLabels" && self.labels.is_some())
            {
                continue;
            }
            doc.append(key, RawBson::from(value));
        }
        doc.append(cstr!("writeConcernError"), self.write_concern_error.clone());
        if !labels.is_empty() && doc.get("errorLabels").ok().flatten().is_none() {
            doc.append(cstr!("errorLabels"), label_array(&labels));
        }
        doc
    }
}

/// mongod's `FailPoint::parseBSON` plus the fields failCommand reads.
fn parse(body: &RawDocument) -> Result<(Mode, Data), MongoError> {
    let mode = match body.get("mode").ok().flatten() {
        None => {
            return Err(MongoError::with_code(
                20,
                "IllegalOperation",
                "When setting a failpoint, you must supply a 'mode'",
            ))
        }
        Some(RawBsonRef::String("off")) => Mode::Off,
        Some(RawBsonRef::String("alwaysOn")) => Mode::AlwaysOn,
        Some(RawBsonRef::String(other)) => {
            return Err(MongoError::bad_value(format!("unknown mode: {other}")))
        }
        Some(RawBsonRef::Document(m)) => parse_mode(m)?,
        Some(_) => {
            return Err(MongoError::type_mismatch(
                "'mode' must be a string or JSON object",
            ))
        }
    };
    let data = match body.get("data").ok().flatten() {
        None => Data::default(),
        Some(RawBsonRef::Document(d)) => parse_data(d)?,
        Some(_) => {
            return Err(MongoError::type_mismatch(
                "the 'data' option must be a JSON object",
            ))
        }
    };
    Ok((mode, data))
}

fn parse_mode(m: &RawDocument) -> Result<Mode, MongoError> {
    let count = |field: &str| -> Result<i64, MongoError> {
        let n = m
            .get(field)
            .ok()
            .flatten()
            .and_then(integer)
            .ok_or_else(|| {
                MongoError::type_mismatch(format!("'{field}' option to 'mode' must be an integer"))
            })?;
        if n < 0 {
            return Err(MongoError::bad_value(format!(
                "'{field}' option to 'mode' must be positive"
            )));
        }
        if n > i64::from(i32::MAX) {
            return Err(MongoError::bad_value(format!(
                "'{field}' option to 'mode' is too large"
            )));
        }
        Ok(n)
    };
    if has(m, "times") {
        Ok(Mode::Times(count("times")?))
    } else if has(m, "skip") {
        Ok(Mode::Skip(count("skip")?))
    } else if has(m, "activationProbability") {
        Err(MongoError::bad_value(
            "mode {activationProbability: p} is not supported by mongo-oidc-proxy; use \
             'alwaysOn', {times: n} or {skip: n}",
        ))
    } else {
        Err(MongoError::bad_value(
            "'mode' must be one of 'off', 'alwaysOn', '{times:n}', '{skip:n}' or \
             '{activationProbability:p}'",
        ))
    }
}

/// Fields mongod's failCommand reads that the proxy cannot honour: setting
/// them is refused rather than letting the fail point fire more widely.
const UNSUPPORTED_DATA: [&str; 4] = ["namespace", "threadName", "errorExtraInfo", "tassert"];

fn parse_data(d: &RawDocument) -> Result<Data, MongoError> {
    if let Some(field) = UNSUPPORTED_DATA.iter().find(|f| has(d, f)) {
        return Err(MongoError::bad_value(format!(
            "failCommand's data.{field} is not supported by mongo-oidc-proxy; the supported \
             fields are failCommands, failAllCommands, appName, closeConnection, \
             blockConnection, blockTimeMS, errorCode, errorLabels and writeConcernError"
        )));
    }
    let field = |name: &str| d.get(name).ok().flatten();
    let boolean = |name: &str| matches!(field(name), Some(RawBsonRef::Boolean(true)));
    let strings = |value: Option<RawBsonRef<'_>>| -> Option<Vec<String>> {
        match value {
            Some(RawBsonRef::Array(a)) => Some(
                a.into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        }
    };
    let block = boolean("blockConnection").then(|| match field("blockTimeMS").and_then(integer) {
        None => Err("must specify 'blockTimeMS' when 'blockConnection' is true"),
        Some(ms) if ms < 0 => Err("'blockTimeMS' must be non-negative"),
        Some(ms) => Ok(ms.unsigned_abs()),
    });
    Ok(Data {
        fail_commands: strings(field("failCommands")).unwrap_or_default(),
        fail_all: has(d, "failAllCommands"),
        app_name: has(d, "appName").then(|| {
            field("appName")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        }),
        close_connection: boolean("closeConnection"),
        block,
        error_code: field("errorCode")
            .and_then(integer)
            .and_then(|c| i32::try_from(c).ok()),
        error_labels: strings(field("errorLabels")),
        write_concern_error: field("writeConcernError").map(RawBson::from),
    })
}

fn has(d: &RawDocument, name: &str) -> bool {
    d.get(name).ok().flatten().is_some()
}

/// mongod's `bsonExtractIntegerField`: any number with an integral value.
fn integer(v: RawBsonRef<'_>) -> Option<i64> {
    match v {
        RawBsonRef::Int32(n) => Some(n.into()),
        RawBsonRef::Int64(n) => Some(n),
        RawBsonRef::Double(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Some(f as i64),
        _ => None,
    }
}

/// Command names mongod registers as aliases of one command.
const ALIASES: [&[&str]; 5] = [
    &["hello", "isMaster", "ismaster"],
    &["buildInfo", "buildinfo"],
    &["findAndModify", "findandmodify"],
    &["dbStats", "dbstats"],
    &["collStats", "collstats"],
];

fn same_command(listed: &str, command: &str) -> bool {
    listed == command
        || ALIASES
            .iter()
            .any(|group| group.contains(&listed) && group.contains(&command))
}

/// The codes whose errors mongod labels `RetryableWriteError` on a
/// retryable write (its RetriableError category and ExceededTimeLimit).
fn retryable_code(code: i32) -> bool {
    matches!(
        code,
        6 | 7 | 89 | 91 | 189 | 262 | 9001 | 10107 | 11600 | 11602 | 13435 | 13436
    )
}

fn default_labels(code: i32, retryable_write: bool) -> Vec<String> {
    if retryable_write && retryable_code(code) {
        vec![RETRYABLE_WRITE_ERROR.to_owned()]
    } else {
        Vec::new()
    }
}

fn label_array(labels: &[String]) -> RawArrayBuf {
    let mut array = RawArrayBuf::new();
    for l in labels {
        array.push(l.as_str());
    }
    array
}

fn error_reply(
    code: i32,
    errmsg: &str,
    labels: Option<&[String]>,
    retryable_write: bool,
) -> RawDocumentBuf {
    let mut doc = RawDocumentBuf::new();
    doc.append(cstr!("ok"), 0.0);
    doc.append(cstr!("errmsg"), errmsg);
    doc.append(cstr!("code"), code);
    doc.append(cstr!("codeName"), code_name(code));
    let labels = match labels {
        Some(l) => l.to_vec(),
        None => default_labels(code, retryable_write),
    };
    if !labels.is_empty() {
        doc.append(cstr!("errorLabels"), label_array(&labels));
    }
    doc
}

/// mongod's `ErrorCodes::errorString`: the name of a known code, else
/// `Location<code>`.
pub fn code_name(code: i32) -> String {
    match CODE_NAMES.binary_search_by_key(&code, |(c, _)| *c) {
        Ok(i) => CODE_NAMES
            .get(i)
            .map_or_else(|| format!("Location{code}"), |(_, n)| (*n).to_owned()),
        Err(_) => format!("Location{code}"),
    }
}

/// mongod's error codes that tests inject, sorted by code.
const CODE_NAMES: &[(i32, &str)] = &[
    (0, "OK"),
    (1, "InternalError"),
    (2, "BadValue"),
    (4, "NoSuchKey"),
    (6, "HostUnreachable"),
    (7, "HostNotFound"),
    (8, "UnknownError"),
    (9, "FailedToParse"),
    (11, "UserNotFound"),
    (13, "Unauthorized"),
    (14, "TypeMismatch"),
    (16, "InvalidLength"),
    (17, "ProtocolError"),
    (18, "AuthenticationFailed"),
    (20, "IllegalOperation"),
    (22, "InvalidBSON"),
    (24, "LockTimeout"),
    (26, "NamespaceNotFound"),
    (27, "IndexNotFound"),
    (43, "CursorNotFound"),
    (46, "LockBusy"),
    (48, "NamespaceExists"),
    (50, "MaxTimeMSExpired"),
    (59, "CommandNotFound"),
    (63, "StaleShardVersion"),
    (64, "WriteConcernFailed"),
    (66, "ImmutableField"),
    (67, "CannotCreateIndex"),
    (68, "IndexAlreadyExists"),
    (72, "InvalidOptions"),
    (73, "InvalidNamespace"),
    (79, "UnknownReplWriteConcern"),
    (85, "IndexOptionsConflict"),
    (86, "IndexKeySpecsConflict"),
    (89, "NetworkTimeout"),
    (90, "CallbackCanceled"),
    (91, "ShutdownInProgress"),
    (96, "OperationFailed"),
    (100, "UnsatisfiableWriteConcern"),
    (112, "WriteConflict"),
    (115, "CommandNotSupported"),
    (117, "ConflictingOperationInProgress"),
    (121, "DocumentValidationFailure"),
    (125, "CommandFailed"),
    (133, "FailedToSatisfyReadPreference"),
    (134, "ReadConcernMajorityNotAvailableYet"),
    (136, "CappedPositionLost"),
    (143, "CursorInUse"),
    (150, "StaleEpoch"),
    (175, "QueryPlanKilled"),
    (189, "PrimarySteppedDown"),
    (202, "NetworkInterfaceExceededTimeLimit"),
    (206, "NoSuchSession"),
    (211, "KeyNotFound"),
    (215, "DatabaseDropPending"),
    (217, "IncompleteTransactionHistory"),
    (222, "CloseChangeStream"),
    (225, "TransactionTooOld"),
    (234, "RetryChangeStream"),
    (237, "CursorKilled"),
    (238, "NotImplemented"),
    (239, "SnapshotTooOld"),
    (244, "NOT_YET_AVAILABLE_TransactionAborted"),
    (246, "SnapshotUnavailable"),
    (249, "StaleDbVersion"),
    (251, "NoSuchTransaction"),
    (256, "TransactionCommitted"),
    (257, "TransactionTooLarge"),
    (261, "TooManyLogicalSessions"),
    (262, "ExceededTimeLimit"),
    (263, "OperationNotSupportedInTransaction"),
    (266, "FailPointSetFailed"),
    (267, "PreparedTransactionInProgress"),
    (279, "ClientDisconnect"),
    (280, "ChangeStreamFatalError"),
    (286, "ChangeStreamHistoryLost"),
    (290, "TransactionExceededLifetimeLimitSeconds"),
    (317, "ConnectionPoolExpired"),
    (322, "APIVersionError"),
    (323, "APIStrictError"),
    (324, "APIDeprecationError"),
    (334, "MechanismUnavailable"),
    (346, "ChangeStreamInvalidated"),
    (352, "UnsupportedOpQueryCommand"),
    (391, "ReauthenticationRequired"),
    (9001, "SocketException"),
    (10107, "NotWritablePrimary"),
    (11000, "DuplicateKey"),
    (11600, "InterruptedAtShutdown"),
    (11601, "Interrupted"),
    (11602, "InterruptedDueToReplStateChange"),
    (13388, "StaleConfig"),
    (13435, "NotPrimaryNoSecondaryOk"),
    (13436, "NotPrimaryOrSecondary"),
    (50915, "BackupCursorOpenConflictWithCheckpoint"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn set(fp: &mut FailPoints, body: RawDocumentBuf) -> RawDocumentBuf {
        fp.configure(&body).unwrap()
    }

    fn on(fp: &mut FailPoints, mode: impl Into<RawBson>, data: RawDocumentBuf) {
        let mut body = rawdoc! { "configureFailPoint": FAIL_COMMAND };
        body.append(cstr!("mode"), mode.into());
        body.append(cstr!("data"), data);
        set(fp, body);
    }

    fn code_of(f: &Fired) -> Option<i32> {
        match &f.then {
            Then::Reply(d) => d.get_i32("code").ok(),
            _ => None,
        }
    }

    fn reply(f: Option<Fired>) -> RawDocumentBuf {
        match f.map(|f| f.then) {
            Some(Then::Reply(d)) => d,
            other => panic!("expected an error reply, got {other:?}"),
        }
    }

    #[test]
    fn error_code_on_listed_commands_only() {
        let mut fp = FailPoints::default();
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["find", "insert"], "errorCode": 391 },
        );
        assert_eq!(fp.before("ping", None, false), None);
        let d = reply(fp.before("find", None, false));
        assert_eq!(
            d,
            rawdoc! {
                "ok": 0.0, "errmsg": "Failing command via 'failCommand' failpoint",
                "code": 391, "codeName": "ReauthenticationRequired",
            }
        );
        assert!(fp.before("insert", Some("x"), false).is_some());
        assert!(
            fp.before("find", None, false).is_some(),
            "alwaysOn stays on"
        );
        // Names are matched exactly, except mongod's aliases.
        assert_eq!(fp.before("Find", None, false), None);
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["isMaster"], "errorCode": 2 },
        );
        assert!(fp.before("hello", None, false).is_some());
        assert!(fp.before("ismaster", None, false).is_some());
    }

    #[test]
    fn times_counts_firings_then_turns_off() {
        let mut fp = FailPoints::default();
        on(
            &mut fp,
            rawdoc! { "times": 2 },
            rawdoc! { "failCommands": ["find"], "errorCode": 2 },
        );
        // Commands that do not match do not count.
        assert_eq!(fp.before("insert", None, false), None);
        assert!(fp.before("find", None, false).is_some());
        assert_eq!(fp.describe(), "{times: 1}");
        assert!(fp.before("find", None, false).is_some());
        assert_eq!(fp.before("find", None, false), None);
        assert_eq!(fp.describe(), "off");
        // count is the firings so far, returned by the next configure.
        let r = set(
            &mut fp,
            rawdoc! { "configureFailPoint": "failCommand", "mode": "off" },
        );
        assert_eq!(r, rawdoc! { "count": 2i64, "ok": 1.0 });
        // {times: 0} fires once, as mongod's counter does.
        on(
            &mut fp,
            rawdoc! { "times": 0 },
            rawdoc! { "failCommands": ["find"], "errorCode": 2 },
        );
        assert!(fp.before("find", None, false).is_some());
        assert_eq!(fp.before("find", None, false), None);
    }

    #[test]
    fn skip_lets_n_through_then_fires_every_time() {
        let mut fp = FailPoints::default();
        on(
            &mut fp,
            rawdoc! { "skip": 2 },
            rawdoc! { "failCommands": ["find"], "errorCode": 2 },
        );
        assert_eq!(fp.before("find", None, false), None);
        assert_eq!(fp.before("ping", None, false), None);
        assert_eq!(fp.before("find", None, false), None);
        for _ in 0..3 {
            assert!(fp.before("find", None, false).is_some());
        }
    }

    #[test]
    fn app_name_filters_connections() {
        let mut fp = FailPoints::default();
        on(
            &mut fp,
            rawdoc! { "times": 1 },
            rawdoc! { "failCommands": ["find"], "errorCode": 2, "appName": "app1" },
        );
        assert_eq!(fp.before("find", None, false), None);
        assert_eq!(fp.before("find", Some("app2"), false), None);
        assert_eq!(fp.describe(), "{times: 1}", "other apps do not count");
        assert!(fp.before("find", Some("app1"), false).is_some());
        // A non-string appName is compared as "" (clients without a name).
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["find"], "errorCode": 2, "appName": 5 },
        );
        assert!(fp.before("find", None, false).is_some());
        assert_eq!(fp.before("find", Some("app1"), false), None);
    }

    #[test]
    fn close_block_and_proceed() {
        let mut fp = FailPoints::default();
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["find"], "closeConnection": true, "errorCode": 2 },
        );
        assert_eq!(
            fp.before("find", None, false),
            Some(Fired {
                block: None,
                then: Then::Close
            })
        );
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["find"], "blockConnection": true, "blockTimeMS": 250 },
        );
        assert_eq!(
            fp.before("find", None, false),
            Some(Fired {
                block: Some(Duration::from_millis(250)),
                then: Then::Proceed
            })
        );
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["find"], "blockConnection": true, "blockTimeMS": 10, "errorCode": 91 },
        );
        let f = fp.before("find", None, false).unwrap();
        assert_eq!(
            (f.block, code_of(&f)),
            (Some(Duration::from_millis(10)), Some(91))
        );
        // blockConnection without a usable blockTimeMS fails the command, as on mongod.
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["find"], "blockConnection": true },
        );
        let d = reply(fp.before("find", None, false));
        assert_eq!(d.get_i32("code").unwrap(), 72);
        assert_eq!(d.get_str("codeName").unwrap(), "InvalidOptions");
        assert_eq!(
            d.get_str("errmsg").unwrap(),
            "must specify 'blockTimeMS' when 'blockConnection' is true"
        );
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["find"], "blockConnection": true, "blockTimeMS": -1 },
        );
        assert_eq!(
            reply(fp.before("find", None, false))
                .get_str("errmsg")
                .unwrap(),
            "'blockTimeMS' must be non-negative"
        );
        // Nothing to do before the command: the fail point is not even counted.
        on(
            &mut fp,
            rawdoc! { "times": 1 },
            rawdoc! { "failCommands": ["find"], "errorLabels": ["X"] },
        );
        assert_eq!(fp.before("find", None, false), None);
        assert_eq!(fp.describe(), "{times: 1}");
        // errorCode 0 is mongod's Status::OK: the command runs.
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["find"], "errorCode": 0 },
        );
        assert_eq!(fp.before("find", None, false).unwrap().then, Then::Proceed);
    }

    #[test]
    fn error_labels_replace_the_defaults() {
        let mut fp = FailPoints::default();
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["insert"], "errorCode": 91 },
        );
        let labels = |d: &RawDocumentBuf| -> Vec<String> {
            d.get_array("errorLabels")
                .map(|a| {
                    a.into_iter()
                        .map(|v| v.unwrap().as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(
            labels(&reply(fp.before("insert", None, true))),
            ["RetryableWriteError"]
        );
        assert!(labels(&reply(fp.before("insert", None, false))).is_empty());
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["insert"], "errorCode": 91, "errorLabels": [] },
        );
        assert!(reply(fp.before("insert", None, true))
            .get("errorLabels")
            .unwrap()
            .is_none());
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["insert"], "errorCode": 2, "errorLabels": ["TransientTransactionError"] },
        );
        assert_eq!(
            labels(&reply(fp.before("insert", None, false))),
            ["TransientTransactionError"]
        );
    }

    #[test]
    fn write_concern_error_after_the_write() {
        let mut fp = FailPoints::default();
        let wce = rawdoc! { "code": 91, "errmsg": "Replication is being shut down" };
        on(
            &mut fp,
            rawdoc! { "times": 1 },
            rawdoc! { "failCommands": ["insert"], "writeConcernError": wce.clone() },
        );
        // Not a before-the-command fault.
        assert_eq!(fp.before("insert", None, true), None);
        assert!(!fp.wants_write_concern_error("find", None));
        assert!(fp.wants_write_concern_error("insert", None));
        let fault = fp.after_write("insert", None, true).unwrap();
        assert_eq!(fp.describe(), "off");
        let backend = rawdoc! { "n": 1, "ok": 1.0 };
        assert_eq!(
            fault.apply(&backend),
            rawdoc! { "n": 1, "ok": 1.0, "writeConcernError": wce.clone(), "errorLabels": ["RetryableWriteError"] }
        );
        // Labels given replace the backend's; none on a non-retryable write.
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["insert"], "writeConcernError": wce.clone(), "errorLabels": ["X"] },
        );
        let fault = fp.after_write("insert", None, false).unwrap();
        assert_eq!(
            fault.apply(
                &rawdoc! { "ok": 1.0, "errorLabels": ["Y"], "writeConcernError": {"code": 1} }
            ),
            rawdoc! { "ok": 1.0, "writeConcernError": wce.clone(), "errorLabels": ["X"] }
        );
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["insert"], "writeConcernError": wce.clone() },
        );
        let fault = fp.after_write("insert", None, false).unwrap();
        assert_eq!(
            fault.apply(&backend),
            rawdoc! { "n": 1, "ok": 1.0, "writeConcernError": wce }
        );
    }

    #[test]
    fn off_and_configure_fail_point_itself_never_fire() {
        let mut fp = FailPoints::default();
        assert_eq!(fp.before("find", None, false), None);
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["configureFailPoint"], "failAllCommands": true, "errorCode": 2 },
        );
        assert_eq!(fp.before("configureFailPoint", None, false), None);
        assert!(
            fp.before("anything", None, false).is_some(),
            "failAllCommands"
        );
        set(
            &mut fp,
            rawdoc! { "configureFailPoint": "failCommand", "mode": "off", "appName": "ignored" },
        );
        assert_eq!(fp.before("anything", None, false), None);
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failAllCommands": true, "errorCode": 2 },
        );
        fp.clear();
        assert_eq!(fp.before("anything", None, false), None);
    }

    fn refusal(body: RawDocumentBuf) -> (i32, String) {
        let e = FailPoints::default().configure(&body).unwrap_err();
        (e.code, e.errmsg)
    }

    #[test]
    fn configure_refusals_as_mongod() {
        let cases = [
            (
                rawdoc! { "configureFailPoint": "failCommand" },
                (20, "When setting a failpoint, you must supply a 'mode'"),
            ),
            (
                rawdoc! { "configureFailPoint": "failCommand", "mode": "sometimes" },
                (2, "unknown mode: sometimes"),
            ),
            (
                rawdoc! { "configureFailPoint": "failCommand", "mode": 1 },
                (14, "'mode' must be a string or JSON object"),
            ),
            (
                rawdoc! { "configureFailPoint": "failCommand", "mode": { "times": -1 } },
                (2, "'times' option to 'mode' must be positive"),
            ),
            (
                rawdoc! { "configureFailPoint": "failCommand", "mode": { "skip": 3_000_000_000i64 } },
                (2, "'skip' option to 'mode' is too large"),
            ),
            (
                rawdoc! { "configureFailPoint": "failCommand", "mode": { "times": "2" } },
                (14, "'times' option to 'mode' must be an integer"),
            ),
            (
                rawdoc! { "configureFailPoint": "failCommand", "mode": { "often": 1 } },
                (2, "'mode' must be one of 'off', 'alwaysOn', '{times:n}', '{skip:n}' or '{activationProbability:p}'"),
            ),
            (
                rawdoc! { "configureFailPoint": "failCommand", "mode": "alwaysOn", "data": [] },
                (14, "the 'data' option must be a JSON object"),
            ),
            (
                rawdoc! { "configureFailPoint": "failGetMoreAfterCursorCheckout", "mode": "off" },
                (266, "failGetMoreAfterCursorCheckout not found"),
            ),
        ];
        for (body, (code, msg)) in cases {
            assert_eq!(refusal(body), (code, msg.to_owned()));
        }
        let (code, msg) = refusal(
            rawdoc! { "configureFailPoint": "failCommand", "mode": "alwaysOn", "data": { "namespace": "db.c" } },
        );
        assert_eq!(code, 2);
        assert!(
            msg.starts_with("failCommand's data.namespace is not supported by mongo-oidc-proxy"),
            "{msg}"
        );
        // A refused configure leaves the previous setting in place.
        let mut fp = FailPoints::default();
        on(
            &mut fp,
            "alwaysOn",
            rawdoc! { "failCommands": ["find"], "errorCode": 2 },
        );
        assert!(fp
            .configure(&rawdoc! { "configureFailPoint": "failCommand", "mode": "x" })
            .is_err());
        assert!(fp.before("find", None, false).is_some());
    }

    #[test]
    fn code_names() {
        assert_eq!(code_name(391), "ReauthenticationRequired");
        assert_eq!(code_name(20), "IllegalOperation");
        assert_eq!(code_name(12345), "Location12345");
        assert!(CODE_NAMES.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    }
}
