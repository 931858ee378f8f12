//! Exit codes and the one error type of the CLI: what went wrong and what to do.

use kakehashi_client::{ClientError, ErrorCode};

/// Process exit codes, documented in `--help` and README.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything done.
    Ok = 0,
    /// Done, but some lines or queries were refused, pending or failed.
    Partial = 1,
    /// Usage, profile, config or input-file error; nothing was sent.
    Usage = 2,
    /// The broker could not be reached, or TLS failed.
    Connection = 3,
    /// The broker refused the request.
    Refused = 4,
    /// Unexpected answer, failed permit check, or a bug.
    Internal = 5,
    /// `audit verify`: the export is self-consistent, but its checkpoints
    /// are not signed by a trusted (pinned or given) key.
    NotTrusted = 6,
    /// A batch stopped because the broker refuses this org as a whole
    /// (suspended, unknown, certificate not accepted, not allowed); the
    /// lines not done were not written, so a rerun asks them.
    OrgRefused = 7,
    /// A query was made and answered `pending`, but its reply key could not
    /// be kept: its answer cannot be opened (the message names the query).
    /// Not [`Exit::Usage`], which promises that nothing was sent.
    KeyNotKept = 8,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The text of the exit-code table shown in `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  done
  1  done, but some lines or queries were refused, are still pending, or failed;
     or `audit verify` found the export altered, or `audit witness` found the
     broker's records contradict a checkpoint this profile kept
  2  usage, profile, config or input-file error (nothing was sent)
  3  cannot reach the broker, or TLS failed (certificate, CA)
  4  the broker refused the request (see the reason code)
  5  unexpected answer, failed permit check, or internal error
  6  `audit verify`: the export is self-consistent, but not signed by a
     trusted key (pin the broker's keys: `kakehashi audit keys --pin`)
  7  a batch stopped: the broker refuses this org as a whole (org_suspended,
     unknown_org, certificate_pin_mismatch, unauthenticated, forbidden);
     the lines not done were not written
  8  a query was made and is pending approval, but its reply key could not
     be kept, so its answer cannot be opened (the message names the query;
     a batch asks it again under the same keys when rerun)";

/// How an error line starts on stderr: `エラー / error: …`.
pub const ERROR: &str = "エラー / error";

/// A failure: exit code, what went wrong, what to do.
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
    pub hint: Option<String>,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            exit: Exit::Usage,
            message: message.into(),
            hint: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> CliError {
        CliError {
            exit: Exit::Internal,
            message: message.into(),
            hint: None,
        }
    }

    /// A file that cannot be read or written.
    pub fn file(what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> CliError {
        CliError::usage(format!(
            "ファイルを扱えません / cannot {what} {}: {e}",
            path.display()
        ))
        .hint("パスと、そこを読み書きできるかを確認してください / check the path and that you may read and write there")
    }

    /// The hint, or a general one for the exit code.
    pub fn hint_or_default(&self) -> &str {
        match (&self.hint, self.exit) {
            (Some(h), _) => h,
            (None, Exit::Usage) => "使い方を確認してください / see `kakehashi --help` and `kakehashi <command> --help`",
            (None, Exit::Connection) => "ブローカーが動いているか、プロファイルが正しいかを確認してください / check that the broker is running and the profile is right (`kakehashi profile list`)",
            (None, Exit::Refused) => "リクエストIDを添えてブローカーの運用担当者に伝えてください / quote the request id to the broker's operator",
            (None, _) => "このメッセージを添えてブローカーの運用担当者に伝えてください / tell the broker's operator, quoting this message",
        }
    }

    /// A query the broker answered `pending` whose reply key could not be
    /// kept. `batch`: asked by a batch, whose rerun derives the same keys
    /// and so can keep the key then.
    pub fn key_not_kept(
        query_id: &kakehashi_client::interfaces::QueryId,
        error: impl std::fmt::Display,
        batch: bool,
    ) -> CliError {
        let (ja, en) = if batch {
            (
                "再実行で鍵を保存できるまで回答は開けません",
                "its answer cannot be opened until a rerun keeps the key",
            )
        } else {
            ("この照会の回答は開けません", "its answer cannot be opened")
        };
        let hint = if batch {
            "返信鍵の保存先（上記）を直してから同じコマンドを再実行してください / fix the reply-key store named above (permissions, disk space), then rerun the same command: the line is asked again under the same keys, the broker gives back the same query, and its key is kept"
        } else {
            "返信鍵の保存先（上記）を直してから照会し直してください / fix the reply-key store named above (permissions, disk space), then query again; the provider's operator still sees this query until it expires"
        };
        CliError {
            exit: Exit::KeyNotKept,
            message: format!(
                "照会 {query_id} は送信され承認待ちですが、返信鍵を保存できませんでした。{ja} / query {query_id} was made and is pending approval, but its reply key could not be kept, so {en}: {error}"
            ),
            hint: Some(hint.into()),
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> CliError {
        self.hint = Some(hint.into());
        self
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} — {}", self.message, self.hint_or_default())
    }
}

const CHECK_PROFILE: &str = "プロファイルを確認してください / check `kakehashi profile list`";

/// What to do about a refusal, by reason code.
pub fn refusal_hint(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::UnknownOrg => {
            "ブローカーにこの証明書の組織が登録されていません。管理者に登録を依頼するか、プロファイルを確認してください / the broker does not know the org of this certificate; ask its administrator to register the org, or check `kakehashi profile list`"
        }
        ErrorCode::OrgSuspended => "この組織はブローカーで停止されています。管理者に問い合わせてください / this org is suspended at the broker; ask its administrator",
        ErrorCode::CertificatePinMismatch => {
            "この証明書は組織に登録された証明書ではありません。登録済みの証明書を使うか、管理者に更新を依頼してください / this certificate is not the one registered for the org; use the registered certificate or ask the administrator to update the pin"
        }
        ErrorCode::Unauthenticated => "ブローカーがクライアント証明書を受け付けませんでした。プロファイルの証明書と鍵を確認してください / the broker did not accept the client certificate; check the profile's certificate and key",
        ErrorCode::Forbidden => "この組織にはその操作が認められていません / this org may not do that; check `kakehashi whoami`",
        ErrorCode::NotOnFlowList | ErrorCode::FlowNotInForce | ErrorCode::ItemNotAllowed => {
            "この組織が使える連携を確認してください / check the flows this org may use with `kakehashi flows`"
        }
        ErrorCode::UnknownPerson => "本人の番号（組織ごとの番号）を確認してください / check the person code (codes are per org)",
        ErrorCode::NoCopy => "提供元はこの本人の情報を持っていません / the provider holds no data for this person",
        ErrorCode::RateLimited | ErrorCode::Unavailable => "ブローカーが混み合っています。後でやり直してください / the broker is busy; try again later",
        ErrorCode::PayloadTooLarge => "1回に送る行数を減らしてください / send fewer lines per request (--batch-size)",
        ErrorCode::Expired => "保存期間を過ぎて結果が削除されました。照会し直してください / the result was deleted after its retention period; query again",
        ErrorCode::InvalidInput => "入力を直してやり直してください / correct the input and try again",
        ErrorCode::NotFound => "識別子を確認してください / check the identifier",
        ErrorCode::InvalidPermit => "照会し直してください。続く場合はブローカーの運用担当者に伝えてください / query again; if it persists, tell the broker's operator",
        _ => "リクエストIDを添えてブローカーの運用担当者に伝えてください / quote the request id to the broker's operator",
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        let message = e.to_string();
        let (exit, hint) = match &e {
            ClientError::Config { .. } => (Exit::Usage, CHECK_PROFILE.to_string()),
            ClientError::InvalidInput(_) => (Exit::Usage, "引数を直してください / correct the arguments".to_string()),
            ClientError::Transport { .. } => (
                Exit::Connection,
                "ブローカーが動いているか、プロファイルのURLが正しいかを確認してください / check that the broker is running and the profile's broker URL is right (`kakehashi profile list`)".to_string(),
            ),
            ClientError::Tls { .. } => (
                Exit::Connection,
                "プロファイルのCA・証明書・鍵ファイルを確認し、この証明書が受け付けられるかを管理者に確認してください / check the profile's CA, certificate and key files (`kakehashi profile list`); ask the broker's administrator whether this certificate is accepted".to_string(),
            ),
            ClientError::Timeout { .. } => (
                Exit::Connection,
                "ブローカーが時間内に応答しませんでした。後でやり直してください / the broker did not answer in time; try again later".to_string(),
            ),
            ClientError::Refused {
                code, retry_after, ..
            } => {
                let mut hint = refusal_hint(*code).to_string();
                if let Some(after) = retry_after {
                    hint.push_str(&format!(" （{0}秒待つよう求められました / the broker asked to wait {0}s)", after.as_secs()));
                }
                (Exit::Refused, hint)
            }
            ClientError::KeyStore { .. } => (
                Exit::Usage,
                "承認待ちの照会の返信鍵の保存先です。何も送信していません / the reply keys of pending queries are kept there (see `kakehashi query --help`); nothing was sent".to_string(),
            ),
            ClientError::Permit { .. } | ClientError::Envelope { .. } => (
                Exit::Internal,
                "回答は破棄しました。ブローカーの運用担当者に伝えてください / the answer was discarded; tell the broker's operator".to_string(),
            ),
            _ => (
                Exit::Internal,
                "クライアントとブローカーの版が合っているかを確認し、運用担当者に伝えてください / check that client and broker versions match; tell the broker's operator".to_string(),
            ),
        };
        CliError {
            exit,
            message,
            hint: Some(hint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_in_japanese_and_english() {
        let both = |h: &str| h.contains(" / ") && !h.is_ascii();
        for code in ErrorCode::ALL {
            assert!(both(refusal_hint(code)), "{code}: {}", refusal_hint(code));
        }
        for exit in [Exit::Usage, Exit::Connection, Exit::Refused, Exit::Internal] {
            let e = CliError {
                exit,
                message: String::new(),
                hint: None,
            };
            assert!(both(e.hint_or_default()), "{exit:?}");
        }
        let file = CliError::file("read", std::path::Path::new("x"), "gone");
        assert!(both(&file.message) && both(file.hint_or_default()));
    }
}
