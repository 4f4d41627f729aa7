//! What the OceanBase error codes most often seen when an observer fails to
//! start mean, and what the operator should do about each.
//!
//! Codes and names are OceanBase's own, from its source of truth
//! (`src/share/ob_errno.def` in github.com/oceanbase/oceanbase, see [`ERRNO_DEF`]);
//! each entry cites the public OceanBase documentation page it was checked
//! against. OceanBase's documentation lists error codes by range ("4000 ~ 4499:
//! common error codes"); where a topic page covers the code (memory, clog disk
//! full), that page is cited instead of the range page.
//!
//! The table is small on purpose: a hint is only worth giving when it is right
//! for a failed start. Any other code is still reported (`ob_errcode`), only
//! without a hint.

/// Where OceanBase defines every error code, its name and its message.
pub const ERRNO_DEF: &str =
    "https://github.com/oceanbase/oceanbase/blob/develop/src/share/ob_errno.def";

/// OceanBase's list of error codes by range (MySQL mode): 4000 ~ 4499 are the
/// common codes, 6000 ~ 6999 transactions and clog.
pub const OVERVIEW_DOC: &str =
    "https://en.oceanbase.com/docs/common-oceanbase-database-10000000001786554";

/// The 4000 ~ 4499 range, code by code, with cause and solution (the
/// documentation of seekdb, OceanBase's kernel, which the tests run).
const RANGE_4000_DOC: &str = "https://www.oceanbase.ai/docs/error-code-4000-4499";

/// OceanBase Database: memory-related errors (-4013, -4030).
const MEMORY_DOC: &str =
    "https://en.oceanbase.com/docs/common-oceanbase-database-10000000003450673";

/// OceanBase Database: emergency handling when the clog disk is full.
const CLOG_FULL_DOC: &str =
    "https://en.oceanbase.com/docs/common-oceanbase-database-10000000003453687";

/// One OceanBase error code and what it means when a start fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObErrorHint {
    /// As the log writes it: "-4016".
    pub code: &'static str,
    /// OceanBase's name for it: "OB_ERR_UNEXPECTED".
    pub name: &'static str,
    /// What it means for a start, in a few words.
    pub meaning: &'static str,
    /// What the operator should do.
    pub action: &'static str,
    /// The OceanBase documentation page this entry was checked against.
    pub doc: &'static str,
}

impl ObErrorHint {
    /// One line for `StepError.details`: name, meaning, what to do, where to read more.
    pub fn render(&self) -> String {
        format!(
            "{} ({}): {}; {} (see {})",
            self.name, self.code, self.meaning, self.action, self.doc
        )
    }
}

const HINTS: &[ObErrorHint] = &[
    ObErrorHint {
        code: "-4004",
        name: "OB_SERVER_LISTEN_ERROR",
        meaning: "the observer could not listen on its mysql or rpc port",
        action: "another process holds mysql_port or rpc_port: find it with 'ss -ltnp', stop it or give the observer free ports, then start again",
        doc: RANGE_4000_DOC,
    },
    ObErrorHint {
        code: "-4013",
        name: "OB_ALLOCATE_MEMORY_FAILED",
        meaning: "the observer could not allocate memory",
        action: "memory_limit (or memory_limit_percentage) asks for more than the host can give: free memory on the host or lower memory_limit and system_memory, then start again",
        doc: MEMORY_DOC,
    },
    ObErrorHint {
        code: "-4030",
        name: "OB_TENANT_OUT_OF_MEM",
        meaning: "a tenant reached its memory limit",
        action: "give the observer more memory (memory_limit) or the tenant a larger unit; if it happens while replaying at start, the tenant's memstore does not fit",
        doc: MEMORY_DOC,
    },
    ObErrorHint {
        code: "-4016",
        name: "OB_ERR_UNEXPECTED",
        meaning: "internal error, OceanBase's catch-all code: it does not say what went wrong by itself",
        action: "read the error lines logged just before it in log_tail (for example 'fail to start net frame' is a port that could not be bound); they name the real cause",
        doc: RANGE_4000_DOC,
    },
    ObErrorHint {
        code: "-4009",
        name: "OB_IO_ERROR",
        meaning: "a read or write system call failed",
        action: "check the disks under data_dir and redo_dir ('dmesg', 'df -h'), and that both dirs are writable by the observer's user",
        doc: RANGE_4000_DOC,
    },
    ObErrorHint {
        code: "-4184",
        name: "OB_SERVER_OUTOF_DISK_SPACE",
        meaning: "the data disk has no room for what datafile_size or datafile_disk_percentage asks",
        action: "free space on the data_dir filesystem or lower datafile_size / datafile_disk_percentage, then start again",
        doc: RANGE_4000_DOC,
    },
    ObErrorHint {
        code: "-4264",
        name: "OB_LOG_OUTOF_DISK_SPACE",
        meaning: "the clog (redo log) disk is full",
        action: "free space on the redo_dir filesystem, or give log_disk_size more room where the disk has it; follow OceanBase's clog-disk-full procedure before forcing anything",
        doc: CLOG_FULL_DOC,
    },
    ObErrorHint {
        code: "-4290",
        name: "OB_ALLOCATE_DISK_SPACE_FAILED",
        meaning: "the observer could not reserve its data file or clog space",
        action: "datafile_size and log_disk_size (or their percentages) add up to more than the free space: free space or lower them, then start again",
        doc: RANGE_4000_DOC,
    },
    ObErrorHint {
        code: "-4147",
        name: "OB_INVALID_CONFIG",
        meaning: "a configuration value was rejected",
        action: "check the -o parameters and etc/observer.config.bin against the error lines, which name the parameter; fix its value and start again",
        doc: RANGE_4000_DOC,
    },
    ObErrorHint {
        code: "-4002",
        name: "OB_INVALID_ARGUMENT",
        meaning: "an argument or parameter had an invalid value",
        action: "check the observer's command line (-o parameters, -d data_dir, -i devname, -I ip) against the error lines",
        doc: RANGE_4000_DOC,
    },
    ObErrorHint {
        code: "-4027",
        name: "OB_FILE_NOT_EXIST",
        meaning: "a file the observer needs is missing",
        action: "check that the files under etc/, data_dir and redo_dir that the error lines name exist and belong to the observer's user",
        doc: RANGE_4000_DOC,
    },
    ObErrorHint {
        code: "-4066",
        name: "OB_DIR_NOT_EXIST",
        meaning: "a directory the observer needs is missing",
        action: "create data_dir, redo_dir and the dirs under them for the observer's user (Prepare with create_dirs does), then start again",
        doc: RANGE_4000_DOC,
    },
    ObErrorHint {
        code: "-4375",
        name: "OB_DISK_ERROR",
        meaning: "the observer found a disk error",
        action: "the disk under data_dir or redo_dir reports errors or hangs: check 'dmesg' and the disk's health before starting again",
        doc: RANGE_4000_DOC,
    },
    ObErrorHint {
        code: "-4403",
        name: "OB_IMPROPER_OS_PARAM",
        meaning: "the observer's operating-system parameter check failed",
        action: "set the kernel parameters and limits OceanBase requires (vm.max_map_count, open files; Prepare's checks list them), then start again",
        doc: RANGE_4000_DOC,
    },
];

/// The hint for an OceanBase error code, "-4016" (or "4016"), if it is one of
/// the codes most often seen when an observer fails to start.
pub fn hint(code: &str) -> Option<&'static ObErrorHint> {
    let digits = code.trim().trim_start_matches('-');
    HINTS
        .iter()
        .find(|h| h.code.trim_start_matches('-') == digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_well_formed_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for h in HINTS {
            assert!(seen.insert(h.code), "{} twice", h.code);
            assert!(h.code.starts_with('-') && h.code[1..].parse::<u32>().is_ok());
            assert!(h.name.starts_with("OB_"), "{}", h.name);
            assert!(h.doc.starts_with("https://"), "{}", h.doc);
            // obhost's voice: lowercase, no trailing full stop.
            for text in [h.meaning, h.action] {
                assert!(!text.starts_with(char::is_uppercase), "{text}");
                assert!(!text.ends_with('.'), "{text}");
            }
        }
        assert!((8..=15).contains(&HINTS.len()));
    }

    #[test]
    fn codes_are_found_with_or_without_their_sign() {
        assert_eq!(hint("-4016").map(|h| h.name), Some("OB_ERR_UNEXPECTED"));
        assert_eq!(
            hint("4013").map(|h| h.name),
            Some("OB_ALLOCATE_MEMORY_FAILED")
        );
        assert_eq!(hint("-4109"), None);
        assert_eq!(hint(""), None);
        let text = hint("-4264").map(ObErrorHint::render).unwrap_or_default();
        assert!(
            text.starts_with("OB_LOG_OUTOF_DISK_SPACE (-4264): "),
            "{text}"
        );
        assert!(text.ends_with(&format!("(see {CLOG_FULL_DOC})")), "{text}");
    }
}
