//! Kubernetes resource quantities (`500m`, `2`, `16Gi`, `1e3`), held as thousandths.

use serde_json::Value;

/// A quantity in milli-units (so `500m` CPU is 500 and `1Gi` is 1073741824000).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(pub i128);

/// The largest magnitude accepted, in milli-units (about 10^27 whole units, far past any real
/// resource): quota and node sums add quantities up, and 2^27 of these still fit in an `i128`.
const LIMIT: i128 = 1 << 100;

impl Quantity {
    fn bounded(milli: i128) -> Option<Quantity> {
        (milli.unsigned_abs() <= LIMIT as u128).then_some(Quantity(milli))
    }

    pub fn parse(s: &str) -> Option<Quantity> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
            .unwrap_or(s.len());
        let (num, suffix) = s.split_at(split);
        let (mult_num, mult_den): (i128, i128) = match suffix {
            "" => (1, 1),
            "n" => (1, 1_000_000_000),
            "u" => (1, 1_000_000),
            "m" => (1, 1000),
            "k" => (1000, 1),
            "M" => (1_000_000, 1),
            "G" => (1_000_000_000, 1),
            "T" => (1_000_000_000_000, 1),
            "P" => (1_000_000_000_000_000, 1),
            "E" => (1_000_000_000_000_000_000, 1),
            "Ki" => (1 << 10, 1),
            "Mi" => (1 << 20, 1),
            "Gi" => (1 << 30, 1),
            "Ti" => (1 << 40, 1),
            "Pi" => (1 << 50, 1),
            "Ei" => (1 << 60, 1),
            e if e.starts_with('e') || e.starts_with('E') => {
                let exp: u32 = e[1..].parse().ok()?;
                (10i128.checked_pow(exp)?, 1)
            }
            _ => return None,
        };
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        let negative = int_part.starts_with('-');
        let int_digits = int_part.trim_start_matches(['+', '-']);
        if int_digits.is_empty() && frac_part.is_empty() {
            return None;
        }
        if !int_digits.bytes().all(|b| b.is_ascii_digit())
            || !frac_part.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let int: i128 = if int_digits.is_empty() { 0 } else { int_digits.parse().ok()? };
        let frac_digits = frac_part.len().min(18) as u32;
        let frac: i128 = if frac_part.is_empty() {
            0
        } else {
            frac_part[..frac_digits as usize].parse().ok()?
        };
        let scale = 10i128.pow(frac_digits);
        // value = (int + frac/scale) * mult_num / mult_den, in milli-units, rounded up.
        let numerator =
            int.checked_mul(scale)?.checked_add(frac)?.checked_mul(mult_num)?.checked_mul(1000)?;
        let denominator = scale * mult_den;
        let milli = numerator.checked_add(denominator - 1)? / denominator;
        Quantity::bounded(if negative { -milli } else { milli })
    }

    pub fn from_value(v: &Value) -> Option<Quantity> {
        match v {
            Value::String(s) => Quantity::parse(s),
            Value::Number(n) => {
                n.as_f64().and_then(|f| Quantity::bounded((f * 1000.0).ceil() as i128))
            }
            _ => None,
        }
    }

    pub fn whole(n: i64) -> Quantity {
        Quantity(n as i128 * 1000)
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::Add for Quantity {
    type Output = Quantity;
    fn add(self, o: Quantity) -> Quantity {
        Quantity(self.0 + o.0)
    }
}

impl std::ops::Sub for Quantity {
    type Output = Quantity;
    fn sub(self, o: Quantity) -> Quantity {
        Quantity(self.0 - o.0)
    }
}

impl std::fmt::Display for Quantity {
    /// Canonical-ish form: whole numbers plainly or with a binary suffix, fractions in `m`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        if m % 1000 != 0 {
            return write!(f, "{m}m");
        }
        let n = m / 1000;
        if n != 0 {
            for (suffix, unit) in [
                ("Ei", 1i128 << 60),
                ("Pi", 1 << 50),
                ("Ti", 1 << 40),
                ("Gi", 1 << 30),
                ("Mi", 1 << 20),
                ("Ki", 1 << 10),
            ] {
                if n % unit == 0 && n >= unit {
                    return write!(f, "{}{suffix}", n / unit);
                }
            }
        }
        write!(f, "{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        assert_eq!(Quantity::parse("500m"), Some(Quantity(500)));
        assert_eq!(Quantity::parse("2"), Some(Quantity(2000)));
        assert_eq!(Quantity::parse("1.5"), Some(Quantity(1500)));
        assert_eq!(Quantity::parse("1Ki"), Some(Quantity(1_024_000)));
        assert_eq!(Quantity::parse("1e3"), Some(Quantity(1_000_000)));
        assert_eq!(Quantity::parse("1Gi").unwrap().to_string(), "1Gi");
        assert_eq!(Quantity::parse("250m").unwrap().to_string(), "250m");
        assert_eq!(Quantity::parse("8").unwrap().to_string(), "8");
        assert!(Quantity::parse("abc").is_none());
        assert!(Quantity::parse("1Qi").is_none());
        assert!(Quantity::from_value(&serde_json::json!(1e300)).is_none());
        assert!(Quantity::from_value(&serde_json::json!(-1e300)).is_none());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const SUFFIXES: [(&str, i128, i128); 17] = [
            ("", 1, 1),
            ("n", 1, 1_000_000_000),
            ("u", 1, 1_000_000),
            ("m", 1, 1000),
            ("k", 1000, 1),
            ("M", 1_000_000, 1),
            ("G", 1_000_000_000, 1),
            ("T", 1_000_000_000_000, 1),
            ("P", 1_000_000_000_000_000, 1),
            ("E", 1_000_000_000_000_000_000, 1),
            ("Ki", 1 << 10, 1),
            ("Mi", 1 << 20, 1),
            ("Gi", 1 << 30, 1),
            ("Ti", 1 << 40, 1),
            ("Pi", 1 << 50, 1),
            ("Ei", 1 << 60, 1),
            ("e6", 1_000_000, 1),
        ];

        proptest! {
            /// Whatever a client puts in a resource field: no panic, and a sum of many of what
            /// is accepted still fits.
            #[test]
            fn any_text_parses_or_is_refused(
                s in "[-+]?[0-9]{0,45}(\\.[0-9]{0,25})?([numkMGTPE]i?|[eE][0-9]{1,3})?|\\PC{0,12}",
            ) {
                if let Some(q) = Quantity::parse(&s) {
                    prop_assert!(q.0.abs() <= LIMIT, "{s:?}");
                    prop_assert!(q.0.checked_mul(1 << 20).is_some(), "a million of {s:?} overflow");
                }
            }

            /// Whole numbers with every suffix mean what Kubernetes says, and print back to the
            /// same quantity.
            #[test]
            fn whole_numbers_with_a_suffix_are_exact(
                n in 0i128..1_000_000_000,
                which in 0usize..SUFFIXES.len(),
            ) {
                let (suffix, num, den) = SUFFIXES[which];
                let q = Quantity::parse(&format!("{n}{suffix}")).unwrap();
                let milli = n * num * 1000;
                prop_assert_eq!(q.0, (milli + den - 1) / den, "rounded up to a milli-unit");
                prop_assert_eq!(Quantity::parse(&q.to_string()), Some(q), "{}", q);
                prop_assert_eq!(Quantity::parse(&format!("-{n}{suffix}")), Some(Quantity(-q.0)));
            }
        }
    }
}
