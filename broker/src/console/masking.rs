//! What a person without the Individual-Number privilege may see (R5):
//! every valid Individual Number in a text replaced, whether written as
//! twelve digits, in groups of four (`1234-5678-9018`, `1234 5678 9018`) or
//! in full-width digits. The pages and the JSON APIs both mask through
//! here, so neither shows what the other hides.

use kakehashi_interfaces::IndividualNumber;

/// What stands in for a hidden number in the JSON APIs (the pages say it in
/// the reader's language).
pub const HIDDEN: &str = "（個人番号: 表示する権限がありません）";

/// `text` as a person may see it: unchanged when `privileged`, else every
/// valid Individual Number in it replaced by `placeholder`.
pub fn hide_numbers(text: &str, privileged: bool, placeholder: &str) -> String {
    if privileged {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(is_digit) {
        out.push_str(&rest[..start]);
        let (end, groups) = digit_span(&rest[start..]);
        hide_in_span(&rest[start..start + end], &groups, placeholder, &mut out);
        rest = &rest[start + end..];
    }
    out.push_str(rest);
    out
}

/// An ASCII or full-width digit.
fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || ('０'..='９').contains(&c)
}

/// A separator between the groups of a number as people write it.
fn is_separator(c: char) -> bool {
    matches!(c, '-' | ' ' | '‐' | '－' | '　' | 'ー')
}

/// The length of the run of digit groups at the start of `text` (groups
/// joined by single separators), and each group's byte range in it.
fn digit_span(text: &str) -> (usize, Vec<(usize, usize)>) {
    let mut groups = Vec::new();
    let mut group_start = 0;
    let mut end = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if is_digit(c) {
            end = i + c.len_utf8();
            continue;
        }
        // A separator counts only between two digits.
        let next_is_digit = chars.peek().is_some_and(|(_, n)| is_digit(*n));
        if is_separator(c) && end == i && next_is_digit {
            groups.push((group_start, end));
            group_start = i + c.len_utf8();
            continue;
        }
        break;
    }
    groups.push((group_start, end));
    (end, groups)
}

/// The ASCII digits of a group, full-width ones folded.
fn ascii_digits(group: &str) -> String {
    group
        .chars()
        .map(|c| match c {
            '０'..='９' => char::from_digit(u32::from(c) - u32::from('０'), 10).unwrap_or(c),
            c => c,
        })
        .collect()
}

/// Writes `span` to `out`, each group that is a valid number by itself, and
/// each three groups of four that are one together, replaced.
fn hide_in_span(span: &str, groups: &[(usize, usize)], placeholder: &str, out: &mut String) {
    let digits: Vec<String> = groups
        .iter()
        .map(|&(a, b)| ascii_digits(&span[a..b]))
        .collect();
    let valid = |s: &str| IndividualNumber::new(s).is_ok();
    let mut written = 0;
    let mut g = 0;
    while g < groups.len() {
        let (start, end) = groups[g];
        let three = (g + 2 < groups.len())
            .then(|| digits[g..g + 3].concat())
            .filter(|d| digits[g..g + 3].iter().all(|x| x.len() == 4) && valid(d));
        let hidden_to = if three.is_some() {
            Some(groups[g + 2].1)
        } else if valid(&digits[g]) {
            Some(end)
        } else {
            None
        };
        match hidden_to {
            Some(to) => {
                out.push_str(&span[written..start]);
                out.push_str(placeholder);
                written = to;
                g += if three.is_some() { 3 } else { 1 };
            }
            None => g += 1,
        }
    }
    out.push_str(&span[written..]);
}

#[cfg(test)]
mod tests {
    use super::hide_numbers;

    const X: &str = "[hidden]";

    #[test]
    fn a_valid_number_is_hidden_however_it_is_written() {
        for written in [
            "123456789018",
            "1234-5678-9018",
            "1234 5678 9018",
            "１２３４５６７８９０１８",
            "１２３４－５６７８－９０１８",
        ] {
            let text = format!("person {written}, seq 7");
            assert_eq!(
                hide_numbers(&text, false, X),
                "person [hidden], seq 7",
                "{written}"
            );
            assert_eq!(hide_numbers(&text, true, X), text, "{written}");
        }
    }

    #[test]
    fn other_digits_are_left_as_they_are() {
        for text in [
            // Not a valid check digit.
            "123456789012",
            "1234-5678-9012",
            // Dates, times, sequence numbers.
            "2026-12-07T09:30:00Z seq 1234",
            "日本語 F-0121",
            "a trailing separator 1234-",
        ] {
            assert_eq!(hide_numbers(text, false, X), text);
        }
    }

    #[test]
    fn a_number_beside_other_digit_groups_is_still_found() {
        assert_eq!(
            hide_numbers("seq 1234 123456789018 end", false, X),
            "seq 1234 [hidden] end"
        );
        assert_eq!(
            hide_numbers("7 1234-5678-9018-99", false, X),
            "7 [hidden]-99"
        );
    }
}
