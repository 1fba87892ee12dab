//! Secrets from the operating system's secure source, and their text form.

/// 32 bytes from the operating system's secure source.
pub fn bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    // Without the OS's random source no secret can be made; no request can go on.
    getrandom::fill(&mut b).expect("the operating system's random source");
    b
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
