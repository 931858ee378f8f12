//! Japanese first, English second: the language a person reads, every
//! label of the pages in both, and how people see instants (JST), ages and
//! numbers. Records stay UTC; only what a page shows is converted.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use http::{header, HeaderMap};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// The cookie the language switch sets.
pub const LANG_COOKIE: &str = "lang";

/// A language of the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// 日本語 (the default).
    Ja,
    /// English.
    En,
}

impl Lang {
    /// `ja` or `en`, as in `<html lang>` and the `lang` cookie.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Ja => "ja",
            Lang::En => "en",
        }
    }

    /// The language a code names, if it is one of ours.
    pub fn from_code(code: &str) -> Option<Lang> {
        match code {
            "ja" => Some(Lang::Ja),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// The request's language: the `lang` cookie the switch set, else the
    /// browser's `Accept-Language`, else Japanese.
    pub fn of(headers: &HeaderMap) -> Lang {
        if let Some(lang) = super::cookie(headers, LANG_COOKIE).and_then(Lang::from_code) {
            return lang;
        }
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .and_then(from_accept_language)
            .unwrap_or(Lang::Ja)
    }
}

/// The preferred of ja and en in an `Accept-Language` header (the higher
/// `q`; on a tie, the one listed first), or `None` when it names neither.
pub fn from_accept_language(header: &str) -> Option<Lang> {
    let mut best: Option<(Lang, f32)> = None;
    for part in header.split(',') {
        let mut pieces = part.split(';');
        let tag = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
        let primary = tag.split('-').next().unwrap_or("");
        let Some(lang) = Lang::from_code(primary) else {
            continue;
        };
        let q = pieces
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let better = match best {
            None => true,
            Some((_, b)) => q > b,
        };
        if q > 0.0 && better {
            best = Some((lang, q));
        }
    }
    best.map(|(lang, _)| lang)
}

/// Every label and message of the pages: key, Japanese, English.
const MESSAGES: &[(&str, &str, &str)] = &[
    ("app_name", "架け橋 コンソール", "Kakehashi console"),
    ("skip_to_main", "本文へ移動", "Skip to main content"),
    ("lang_switch", "表示言語", "Language"),
    ("who_label", "ログイン中の利用者", "Logged in"),
    ("user", "利用者", "User"),
    ("org", "団体", "Org"),
    ("roles", "役割", "Role"),
    ("role_operator", "承認担当者", "Operator"),
    ("role_auditor", "監査担当者", "Auditor"),
    ("role_administrator", "管理者", "Administrator"),
    ("logout", "ログアウト", "Log out"),
    ("pending_badge", "承認待ち", "Pending"),
    ("login_title", "ログイン", "Log in"),
    (
        "login_intro",
        "利用者IDとパスワードを入力してください。",
        "Enter your user id and password.",
    ),
    ("user_id", "利用者ID", "User id"),
    ("password", "パスワード", "Password"),
    ("next", "次へ", "Next"),
    (
        "session_expired",
        "セッションが終了しました。もう一度ログインしてください。",
        "Your session ended. Please log in again.",
    ),
    ("logged_out", "ログアウトしました。", "You are logged out."),
    (
        "bad_user_id",
        "利用者IDの形式が正しくありません（英小文字・数字・「.」「_」「-」の3〜64文字）",
        "The user id is malformed (3 to 64 of a-z, 0-9, '.', '_' and '-')",
    ),
    (
        "password_missing",
        "パスワードを入力してください（128文字以内）",
        "Enter a password (at most 128 characters)",
    ),
    ("password_title", "パスワードの変更", "Change your password"),
    (
        "password_intro",
        "仮パスワードを、ご自身だけが知る新しいパスワードに変更してください。",
        "Replace the temporary password with a new one that only you know.",
    ),
    (
        "password_rules",
        "12文字以上で、利用者IDと異なり、直近5回に使ったものと異なるパスワードにしてください。",
        "At least 12 characters, not your user id, and none of your last 5 passwords.",
    ),
    ("current_password", "現在のパスワード", "Current password"),
    ("new_password", "新しいパスワード", "New password"),
    (
        "confirm_password",
        "新しいパスワード（確認）",
        "New password (again)",
    ),
    ("change", "変更する", "Change"),
    (
        "password_mismatch",
        "確認用の新しいパスワードが一致しません",
        "The two new passwords differ",
    ),
    ("totp_title", "確認コード", "Verification code"),
    (
        "totp_enrol_title",
        "認証アプリの登録",
        "Set up your authenticator app",
    ),
    (
        "totp_enrol_intro",
        "スマートフォンなどの認証アプリで次のQRコードを読み取ってください。",
        "Scan this QR code with the authenticator app on your phone or token.",
    ),
    (
        "totp_manual",
        "読み取れない場合は、次の鍵を認証アプリに手入力してください。",
        "If you cannot scan it, type this key into the authenticator app.",
    ),
    (
        "totp_qr_alt",
        "認証アプリ登録用のQRコード",
        "QR code for the authenticator app",
    ),
    ("totp_uri", "登録用URI", "Enrolment URI"),
    ("totp_secret", "鍵（手入力用）", "Key (to type in)"),
    (
        "totp_intro",
        "認証アプリに表示されている6桁の確認コードを入力してください。",
        "Enter the 6-digit code your authenticator app shows.",
    ),
    ("totp_code", "確認コード（6桁）", "Code (6 digits)"),
    ("verify", "確認する", "Verify"),
    (
        "totp_code_format",
        "確認コードは6桁の数字です",
        "The code is 6 digits",
    ),
    ("queue_title", "承認待ちの照会", "Queries awaiting approval"),
    (
        "queue_count",
        "承認待ちは {n} 件です。",
        "Awaiting approval: {n}",
    ),
    (
        "queue_empty",
        "承認待ちの照会はありません。",
        "No query is awaiting approval.",
    ),
    (
        "queue_caption",
        "あなたの団体への照会のうち、自動では回答できない項目を含むもの",
        "Queries to your organisation asking for items that are not answered automatically",
    ),
    ("col_query", "照会ID", "Query"),
    ("col_requester", "依頼元", "Requester"),
    ("col_flow", "事務（フロー／手続）", "Flow / procedure"),
    ("col_items", "項目", "Items"),
    ("col_asked", "照会日時", "Asked at"),
    ("col_age", "経過時間", "Waiting"),
    ("col_expires", "期限", "Expires"),
    ("sort_label", "並び順", "Order"),
    ("sort_oldest", "古い順", "Oldest first"),
    ("sort_newest", "新しい順", "Newest first"),
    ("detail_title", "照会の内容", "Query details"),
    (
        "values_title",
        "承認すると提供される値",
        "Values released on approval",
    ),
    ("col_item", "項目", "Item"),
    ("col_value", "値", "Value"),
    ("decide_title", "判断", "Decision"),
    ("approve", "承認する", "Approve"),
    (
        "approve_note",
        "承認すると、上の値が暗号化されて依頼元に提供され、提供記録に残ります。",
        "Approving releases the values above to the requester, encrypted, and records it.",
    ),
    ("reject", "却下する", "Reject"),
    (
        "reject_reason",
        "却下の理由（依頼元に表示されます。個人の情報は書かないでください。200文字以内）",
        "Reason (shown to the requester; write no personal data; at most 200 characters)",
    ),
    (
        "reason_rule",
        "却下の理由は1〜200文字で、改行やタブを含めずに書いてください",
        "Write a reason of 1 to 200 characters, without line breaks or tabs",
    ),
    (
        "decided_approved",
        "照会 {q} を承認しました。提供記録番号: {r}",
        "Query {q} approved. Provision record no. {r}",
    ),
    (
        "decided_rejected",
        "照会 {q} を却下しました。提供記録番号: {r}",
        "Query {q} rejected. Provision record no. {r}",
    ),
    ("back_to_queue", "承認待ちの一覧へ戻る", "Back to the queue"),
    ("yes", "はい", "yes"),
    ("no", "いいえ", "no"),
    (
        "number_hidden",
        "（個人番号: 表示する権限がありません）",
        "(Individual Number: you may not see it)",
    ),
    ("last_login", "前回のログイン", "Previous login"),
    (
        "last_failed",
        "前回失敗したログイン",
        "Previous failed login",
    ),
    ("none_yet", "なし", "none"),
    ("from", "接続元", "from"),
    ("home_title", "ホーム", "Home"),
    (
        "home_no_pages",
        "あなたの役割の画面はまだありません。APIまたはコマンドをご利用ください。",
        "There are no pages for your role yet; use the API or the command line.",
    ),
    ("error_title", "エラー", "Error"),
    ("error_home", "最初の画面へ", "Go to the start page"),
    ("request_id", "問い合わせ番号", "Request id"),
    (
        "err_invalid_input",
        "入力内容に誤りがあります",
        "Invalid input",
    ),
    ("err_forbidden", "この操作はできません", "Not allowed"),
    ("err_not_found", "見つかりません", "Not found"),
    ("err_conflict", "既に判断済みです", "Already decided"),
    ("err_expired", "期限切れです", "Expired"),
    (
        "err_session_required",
        "ログインが必要です",
        "Please log in",
    ),
    (
        "err_account_locked",
        "アカウントがロックされています",
        "Account locked",
    ),
    (
        "err_rate_limited",
        "アクセスが集中しています",
        "Too many requests",
    ),
    (
        "err_method_not_allowed",
        "この方法では開けません",
        "Method not allowed",
    ),
    ("err_internal", "内部エラーが発生しました", "Internal error"),
    (
        "err_other",
        "処理できませんでした",
        "The request could not be done",
    ),
];

/// Every page's labels: the shared ones and each group of pages' own.
fn all_messages() -> impl Iterator<Item = &'static (&'static str, &'static str, &'static str)> {
    MESSAGES.iter().chain(super::audit::MESSAGES)
}

/// The labels of `lang`, by key, for the templates (`t.key`).
pub fn table(lang: Lang) -> BTreeMap<&'static str, &'static str> {
    all_messages()
        .map(|(key, ja, en)| (*key, pick(lang, ja, en)))
        .collect()
}

/// [`table`] as a template value, built once per language: every page
/// passes it, and building it anew each time was a good part of a page's
/// rendering time.
pub fn table_value(lang: Lang) -> minijinja::Value {
    static TABLES: OnceLock<[minijinja::Value; 2]> = OnceLock::new();
    let [ja, en] = TABLES.get_or_init(|| {
        [
            minijinja::Value::from(minijinja::value::Serde(table(Lang::Ja))),
            minijinja::Value::from(minijinja::value::Serde(table(Lang::En))),
        ]
    });
    match lang {
        Lang::Ja => ja.clone(),
        Lang::En => en.clone(),
    }
}

/// One label; an unknown key is a bug the unit tests find, shown as the key.
pub fn text(lang: Lang, key: &'static str) -> &'static str {
    static BY_KEY: OnceLock<HashMap<&'static str, (&'static str, &'static str)>> = OnceLock::new();
    BY_KEY
        .get_or_init(|| {
            let mut map = HashMap::new();
            // The first of a repeated key wins, as a search from the top would.
            for (k, ja, en) in all_messages() {
                map.entry(*k).or_insert((*ja, *en));
            }
            map
        })
        .get(key)
        .map_or(key, |(ja, en)| pick(lang, ja, en))
}

fn pick(lang: Lang, ja: &'static str, en: &'static str) -> &'static str {
    match lang {
        Lang::Ja => ja,
        Lang::En => en,
    }
}

/// The title a page shows for an error code.
pub fn error_title(lang: Lang, code: &str) -> &'static str {
    let key = match code {
        "invalid_input" => "err_invalid_input",
        "forbidden" => "err_forbidden",
        "not_found" => "err_not_found",
        "conflict" => "err_conflict",
        "expired" => "err_expired",
        "session_required" => "err_session_required",
        "account_locked" => "err_account_locked",
        "rate_limited" => "err_rate_limited",
        "method_not_allowed" => "err_method_not_allowed",
        "internal" => "err_internal",
        _ => "err_other",
    };
    text(lang, key)
}

/// A broker message ("日本語 / English") in one language, with the UTC
/// instants it names shown in JST. A message in one language only is shown
/// as it is.
pub fn message(lang: Lang, text: &str) -> String {
    let parts: Vec<&str> = text.split(" / ").collect();
    let chosen = match parts.as_slice() {
        [ja, en] => pick_owned(lang, ja, en),
        // "規則 / rule: 詳細 / detail": a bilingual message inside another.
        [ja, mid, en] => match mid.split_once(": ") {
            Some((en_head, ja_tail)) => match lang {
                Lang::Ja => format!("{ja}: {ja_tail}"),
                Lang::En => format!("{en_head}: {en}"),
            },
            None => text.to_string(),
        },
        _ => text.to_string(),
    };
    instants_in_jst(&chosen)
}

fn pick_owned(lang: Lang, ja: &str, en: &str) -> String {
    match lang {
        Lang::Ja => ja.to_string(),
        Lang::En => en.to_string(),
    }
}

/// Replaces every `YYYY-MM-DDTHH:MM:SSZ` in `text` with its JST form.
fn instants_in_jst(text: &str) -> String {
    const LEN: usize = "2025-04-01T00:00:00Z".len();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let candidate = rest.get(..LEN).filter(|c| {
            c.ends_with('Z')
                && c.as_bytes()[10] == b'T'
                && OffsetDateTime::parse(c, &Rfc3339).is_ok()
        });
        match candidate {
            Some(instant) => {
                out.push_str(&jst(instant));
                rest = &rest[LEN..];
            }
            None => {
                let mut chars = rest.chars();
                if let Some(c) = chars.next() {
                    out.push(c);
                }
                rest = chars.as_str();
            }
        }
    }
    out
}

/// An RFC 3339 instant as people read it: `2025-04-01 09:00:00 JST`. Text
/// that is not an instant is shown as it is.
pub fn jst(rfc3339: &str) -> String {
    match OffsetDateTime::parse(rfc3339, &Rfc3339) {
        Ok(at) => jst_of(at),
        Err(_) => rfc3339.to_string(),
    }
}

/// An instant in JST (in UTC when JST would pass the year 9999).
pub fn jst_of(at: OffsetDateTime) -> String {
    let (at, zone) = match at.checked_to_offset(crate::policy::JST) {
        Some(jst) => (jst, "JST"),
        None => (at.checked_to_offset(UtcOffset::UTC).unwrap_or(at), "UTC"),
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} {zone}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// How long something has waited: `2時間5分` / `2 h 5 min`.
pub fn age(lang: Lang, secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match lang {
        Lang::Ja if d > 0 => format!("{d}日{h}時間"),
        Lang::Ja if h > 0 => format!("{h}時間{m}分"),
        Lang::Ja if m > 0 => format!("{m}分"),
        Lang::Ja => format!("{s}秒"),
        Lang::En if d > 0 => format!("{d} d {h} h"),
        Lang::En if h > 0 => format!("{h} h {m} min"),
        Lang::En if m > 0 => format!("{m} min"),
        Lang::En => format!("{s} s"),
    }
}

/// A number with thousands separators: `2,000,000`, `-1,234.5`.
pub fn number(text: &str) -> String {
    let (sign, unsigned) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", text),
    };
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (unsigned, None),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return text.to_string();
    }
    let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match fraction {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_has_both_languages_and_one_key() {
        let mut keys = std::collections::BTreeSet::new();
        for (key, ja, en) in all_messages() {
            assert!(keys.insert(*key), "{key} twice");
            assert!(!ja.is_empty() && !en.is_empty(), "{key}");
            assert_ne!(ja, en, "{key} is not translated");
        }
    }

    #[test]
    fn the_cookie_wins_then_accept_language_then_japanese() {
        let mut headers = HeaderMap::new();
        assert_eq!(Lang::of(&headers), Lang::Ja);
        headers.insert(header::ACCEPT_LANGUAGE, "en-US,en;q=0.9".parse().unwrap());
        assert_eq!(Lang::of(&headers), Lang::En);
        headers.insert(
            header::ACCEPT_LANGUAGE,
            "en;q=0.5,ja;q=0.8".parse().unwrap(),
        );
        assert_eq!(Lang::of(&headers), Lang::Ja);
        headers.insert(header::ACCEPT_LANGUAGE, "fr,de".parse().unwrap());
        assert_eq!(Lang::of(&headers), Lang::Ja);
        headers.insert(header::ACCEPT_LANGUAGE, "ja-JP,ja;q=0.9".parse().unwrap());
        headers.insert(header::COOKIE, "a=b; lang=en".parse().unwrap());
        assert_eq!(Lang::of(&headers), Lang::En);
        headers.insert(header::COOKIE, "lang=xx".parse().unwrap());
        assert_eq!(Lang::of(&headers), Lang::Ja);
    }

    #[test]
    fn bilingual_messages_split_and_instants_read_in_jst() {
        let wrong = "確認コードが正しくありません / wrong code";
        assert_eq!(message(Lang::Ja, wrong), "確認コードが正しくありません");
        assert_eq!(message(Lang::En, wrong), "wrong code");
        let nested = "パスワードの規則 / password rule: 12文字以上にしてください / must be at least 12 characters";
        assert_eq!(
            message(Lang::Ja, nested),
            "パスワードの規則: 12文字以上にしてください"
        );
        assert_eq!(
            message(Lang::En, nested),
            "password rule: must be at least 12 characters"
        );
        assert_eq!(message(Lang::Ja, "only english"), "only english");
        let locked = "連続して失敗したため 2026-01-31T15:30:00Z までロックされています / locked until 2026-01-31T15:30:00Z";
        assert_eq!(
            message(Lang::Ja, locked),
            "連続して失敗したため 2026-02-01 00:30:00 JST までロックされています"
        );
    }

    #[test]
    fn numbers_ages_and_dates_read_as_people_expect() {
        assert_eq!(number("2000000"), "2,000,000");
        assert_eq!(number("-1234.5"), "-1,234.5");
        assert_eq!(number("999"), "999");
        assert_eq!(number("1e10"), "1e10");
        assert_eq!(age(Lang::Ja, 3725), "1時間2分");
        assert_eq!(age(Lang::En, 3725), "1 h 2 min");
        assert_eq!(age(Lang::Ja, 45), "45秒");
        assert_eq!(jst("2025-03-31T15:00:00Z"), "2025-04-01 00:00:00 JST");
        assert_eq!(jst("not a date"), "not a date");
    }
}
