//! What a person without the Individual-Number privilege may see (R5):
//! every valid Individual Number in a text replaced, whether written as
//! twelve digits, in groups of four (`1234-5678-9018`, `1234 5678 9018`) or
//! in full-width digits. The pages and the JSON APIs both mask through
//! here, so neither shows what the other hides.

use kakehashi_interfaces::individual_number;

/// What stands in for a hidden number in the JSON APIs (the pages say it in
/// the reader's language).
pub const HIDDEN: &str = "（個人番号: 表示する権限がありません）";

/// `text` as a person may see it: unchanged when `privileged`, else every
/// valid Individual Number in it ([`individual_number::spans_in`])
/// replaced by `placeholder`.
pub fn hide_numbers(text: &str, privileged: bool, placeholder: &str) -> String {
    if privileged {
        text.to_string()
    } else {
        individual_number::replace_in(text, placeholder)
    }
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
