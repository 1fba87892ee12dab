//! Amounts as people read and type them: minor units in a currency's own exponent (zero-decimal
//! currencies such as JPY have none, a few such as KWD have three, as Stripe counts them), with
//! the digit grouping and decimal mark of the reader's language (`Accept-Language`). The ISO code
//! follows the number, so no symbol is ever ambiguous ("$" is several currencies).

/// Stripe's zero-decimal currencies: an amount is already in whole units.
const ZERO_DECIMAL: &[&str] = &[
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];
/// Stripe's three-decimal currencies.
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

/// Digits after the decimal mark in `currency`'s minor units.
pub fn exponent(currency: &str) -> u32 {
    let c = currency.to_ascii_lowercase();
    if ZERO_DECIMAL.contains(&c.as_str()) {
        0
    } else if THREE_DECIMAL.contains(&c.as_str()) {
        3
    } else {
        2
    }
}

/// How a language writes numbers: the group separator and the decimal mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locale {
    pub group: &'static str,
    pub decimal: char,
}

/// English and most of Asia: 1,234.56
pub const POINT: Locale = Locale { group: ",", decimal: '.' };
const COMMA_DOT: Locale = Locale { group: ".", decimal: ',' };
/// French: a narrow no-break space groups digits.
const FRENCH: Locale = Locale { group: "\u{202f}", decimal: ',' };
const SPACE_COMMA: Locale = Locale { group: "\u{a0}", decimal: ',' };
const SWISS: Locale = Locale { group: "\u{2019}", decimal: '.' };

/// The locale of the first language in an `Accept-Language` header this table knows (a region
/// tag first, then its language); English's when none.
pub fn locale(accept_language: Option<&str>) -> Locale {
    let Some(header) = accept_language else { return POINT };
    for tag in header.split(',') {
        let tag = tag.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let language = tag.split(['-', '_']).next().unwrap_or_default();
        let by_region = match tag.as_str() {
            "de-ch" | "it-ch" | "de-li" => Some(SWISS),
            "fr-ch" => Some(SWISS),
            "pt-pt" => Some(SPACE_COMMA),
            "es-mx" | "es-us" => Some(POINT),
            _ => None,
        };
        let found = by_region.or(match language {
            "en" | "ja" | "zh" | "ko" | "th" | "he" | "ms" | "hi" | "ga" => Some(POINT),
            "de" | "es" | "it" | "nl" | "pt" | "id" | "tr" | "da" | "el" | "ro" | "hr" | "sl"
            | "sr" | "vi" => Some(COMMA_DOT),
            "fr" => Some(FRENCH),
            "pl" | "cs" | "sk" | "ru" | "uk" | "sv" | "nb" | "nn" | "no" | "fi" | "hu" | "bg"
            | "lt" | "lv" | "et" => Some(SPACE_COMMA),
            _ => None,
        });
        if let Some(l) = found {
            return l;
        }
    }
    POINT
}

fn grouped(mut n: u64, group: &str) -> String {
    let mut parts = Vec::new();
    loop {
        if n < 1000 {
            parts.push(n.to_string());
            break;
        }
        parts.push(format!("{:03}", n % 1000));
        n /= 1000;
    }
    parts.reverse();
    parts.join(group)
}

/// `minor` units of `currency` as `locale` writes them, with the ISO code: `1,234.56 USD`,
/// `1.234,56 EUR`, `1,235 JPY`.
pub fn format(minor: i64, currency: &str, locale: Locale) -> String {
    let e = exponent(currency);
    let unit = 10u64.pow(e);
    let abs = minor.unsigned_abs();
    let sign = if minor < 0 { "-" } else { "" };
    let whole = grouped(abs / unit, locale.group);
    let code = currency.to_ascii_uppercase();
    if e == 0 {
        format!("{sign}{whole} {code}")
    } else {
        let fraction = format!("{:0width$}", abs % unit, width = e as usize);
        format!("{sign}{whole}{}{fraction} {code}", locale.decimal)
    }
}

/// An amount as a customer typed it (major units, the locale's marks; group separators and
/// spaces allowed) in minor units of `currency`; the error says what is wrong in words.
pub fn parse(typed: &str, currency: &str, locale: Locale) -> Result<i64, String> {
    let e = exponent(currency) as usize;
    // A trailing currency code ("25 EUR") is allowed; letters alone are not an amount.
    let stripped =
        typed.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic() || c.is_whitespace());
    let kept = if stripped.is_empty() { typed.trim() } else { stripped };
    let cleaned: String = kept
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '\u{a0}' | '\u{202f}' | '\u{2019}' | '\''))
        .collect();
    if cleaned.is_empty() {
        return Err("Enter an amount.".into());
    }
    let group = if locale.decimal == ',' { '.' } else { ',' };
    let (whole, fraction) = match cleaned.split_once(locale.decimal) {
        Some((w, f)) => (w.replace(group, ""), f.to_string()),
        None => (cleaned.replace(group, ""), String::new()),
    };
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if !digits(&whole) || !(fraction.is_empty() || digits(&fraction)) {
        return Err(format!(
            "{typed:?} is not an amount: write it like {}.",
            format(2500 * 10i64.pow(e as u32) / 100, currency, locale)
        ));
    }
    if fraction.len() > e {
        return Err(if e == 0 {
            format!(
                "{} has no smaller unit: enter whole {}.",
                currency.to_uppercase(),
                currency.to_uppercase()
            )
        } else {
            format!("{} has {e} decimal places at most.", currency.to_uppercase())
        });
    }
    let whole: i64 = whole.parse().map_err(|_| "That amount is too large.".to_string())?;
    let fraction: i64 = format!("{fraction:0<e$}").parse().unwrap_or(0);
    whole
        .checked_mul(10i64.pow(e as u32))
        .and_then(|w| w.checked_add(fraction))
        .ok_or_else(|| "That amount is too large.".to_string())
}

/// The smallest and largest top-up in minor units: 5 to 10,000 whole units (500 to 1,000,000
/// for zero-decimal currencies, whose units are small).
pub fn top_up_range(currency: &str) -> (i64, i64) {
    match exponent(currency) {
        0 => (500, 1_000_000),
        e => (5 * 10i64.pow(e), 10_000 * 10i64.pow(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_follow_the_currency_and_the_language() {
        assert_eq!(format(123456, "usd", POINT), "1,234.56 USD");
        assert_eq!(format(5, "usd", POINT), "0.05 USD");
        assert_eq!(format(-1050, "usd", POINT), "-10.50 USD");
        assert_eq!(format(123456, "jpy", POINT), "123,456 JPY", "zero-decimal: no cents");
        assert_eq!(format(123456, "kwd", POINT), "123.456 KWD", "three decimals");
        assert_eq!(format(123456789, "eur", locale(Some("de-DE,de;q=0.9"))), "1.234.567,89 EUR");
        assert_eq!(format(123456789, "eur", locale(Some("fr"))), "1\u{202f}234\u{202f}567,89 EUR");
        assert_eq!(format(123456, "chf", locale(Some("de-CH"))), "1\u{2019}234.56 CHF");
        assert_eq!(format(123456, "sek", locale(Some("sv-SE"))), "1\u{a0}234,56 SEK");
        assert_eq!(format(0, "usd", POINT), "0.00 USD");
        assert_eq!(format(999, "jpy", locale(Some("ja"))), "999 JPY");
        // Unknown languages fall through to the next one, then to English.
        assert_eq!(locale(Some("xx, nl;q=0.8")), COMMA_DOT);
        assert_eq!(locale(Some("xx")), POINT);
        assert_eq!(locale(None), POINT);
    }

    #[test]
    fn typed_amounts_parse_in_the_readers_marks() {
        assert_eq!(parse("25", "usd", POINT), Ok(2500));
        assert_eq!(parse(" 25.5 ", "usd", POINT), Ok(2550));
        assert_eq!(parse("1,234.56", "usd", POINT), Ok(123456));
        assert_eq!(parse("1.234,56", "eur", COMMA_DOT), Ok(123456));
        assert_eq!(parse("25,50 EUR", "eur", COMMA_DOT), Ok(2550));
        assert_eq!(parse("1\u{202f}000,5", "eur", FRENCH), Ok(100050));
        assert_eq!(parse("5000", "jpy", POINT), Ok(5000));
        assert_eq!(parse("1.5", "kwd", POINT), Ok(1500));
        assert!(parse("5000.5", "jpy", POINT).unwrap_err().contains("no smaller unit"));
        assert!(parse("1.234", "usd", POINT).unwrap_err().contains("2 decimal places"));
        assert!(parse("ten", "usd", POINT).unwrap_err().contains("not an amount"));
        assert!(parse("-5", "usd", POINT).unwrap_err().contains("not an amount"));
        assert!(parse("", "usd", POINT).unwrap_err().contains("Enter an amount"));
        assert!(parse("99999999999999999999", "usd", POINT).unwrap_err().contains("too large"));
        assert_eq!(top_up_range("usd"), (500, 1_000_000));
        assert_eq!(top_up_range("jpy"), (500, 1_000_000));
        assert_eq!(top_up_range("kwd"), (5_000, 10_000_000));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_locale() -> impl Strategy<Value = Locale> {
            proptest::sample::select(vec![POINT, COMMA_DOT, FRENCH, SPACE_COMMA, SWISS])
        }

        fn any_currency() -> impl Strategy<Value = &'static str> {
            proptest::sample::select(vec!["usd", "eur", "jpy", "kwd", "chf", "krw", "bhd"])
        }

        proptest! {
            /// What the dashboard shows, typed back into the top-up form, is the same amount.
            #[test]
            fn shown_amounts_parse_back(
                minor in 0i64..=i64::MAX,
                currency in any_currency(),
                locale in any_locale(),
            ) {
                let shown = format(minor, currency, locale);
                prop_assert_eq!(parse(&shown, currency, locale), Ok(minor), "{}", shown);
            }

            /// Whatever is typed: an amount that is not negative, or an error in words.
            #[test]
            fn typed_text_is_an_amount_or_an_error(
                typed in "[0-9.,' \u{a0}\u{202f}\u{2019}-]{0,24}[a-zA-Z]{0,4}|\\PC{0,16}",
                currency in any_currency(),
                locale in any_locale(),
            ) {
                match parse(&typed, currency, locale) {
                    Ok(minor) => prop_assert!(minor >= 0),
                    Err(e) => prop_assert!(e.ends_with('.') && e.len() > 10, "{e:?}"),
                }
            }
        }
    }
}
