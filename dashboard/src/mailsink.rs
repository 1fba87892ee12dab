//! A local mail sink for `alcove up`: an SMTP server on loopback that accepts every message and
//! writes it to a folder as `<n>.eml`, so sign-in codes can be read on a machine with no mail
//! relay. Only what a relay client needs (RFC 5321's minimum: HELO/EHLO, MAIL, RCPT, DATA, RSET,
//! NOOP, QUIT); not for production, where `--smtp` names a real relay.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Largest message kept, in bytes (codes are a few hundred).
const MAX_MESSAGE: usize = 1 << 20;

pub struct MailSink {
    pub port: u16,
    pub dir: PathBuf,
}

/// Starts the sink on a free loopback port; it runs as long as the returned future is polled.
pub async fn start(
    dir: PathBuf,
) -> std::io::Result<(MailSink, impl std::future::Future<Output = ()> + Send + 'static)> {
    std::fs::create_dir_all(&dir)?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    let next = Arc::new(AtomicU64::new(first_free(&dir)));
    let folder = dir.clone();
    let serving = async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (folder, next) = (folder.clone(), next.clone());
            tokio::spawn(async move {
                if let Err(e) = session(stream, &folder, &next).await {
                    tracing::debug!(error = %e, "mail sink connection");
                }
            });
        }
    };
    Ok((MailSink { port, dir }, serving))
}

/// The number after the highest `<n>.eml` already there (a restarted `alcove up` keeps old mail).
fn first_free(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".eml")?.parse::<u64>().ok())
        .max()
        .map_or(1, |n| n + 1)
}

async fn session(
    stream: TcpStream,
    dir: &std::path::Path,
    next: &AtomicU64,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 alcove-up mail sink\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or(&line).to_ascii_uppercase();
        let reply: &[u8] = match verb.trim_end() {
            "EHLO" => b"250-alcove-up\r\n250 8BITMIME\r\n",
            "HELO" | "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 ok\r\n",
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            "DATA" => {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut message = Vec::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    // Dot-stuffing (RFC 5321 4.5.2).
                    let text = line.strip_prefix('.').unwrap_or(&line);
                    if message.len() + text.len() <= MAX_MESSAGE {
                        message.extend_from_slice(text.as_bytes());
                    }
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                tokio::fs::write(dir.join(format!("{n}.eml")), &message).await?;
                b"250 kept\r\n"
            }
            _ => b"502 not implemented\r\n",
        };
        write.write_all(reply).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::Address;

    #[tokio::test]
    async fn the_mailer_delivers_into_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, serving) = start(dir.path().join("mail")).await.unwrap();
        tokio::spawn(serving);
        let mailer = crate::mail::Mailer::new(
            &format!("smtp://127.0.0.1:{}", sink.port),
            "Alcove <no-reply@alcove.test>",
        )
        .unwrap();
        let to = Address::parse("ada@example.com").unwrap();
        mailer.send_code(&to, "123456").await.unwrap();
        mailer.send_code(&to, "654321").await.unwrap();
        let first = std::fs::read_to_string(sink.dir.join("1.eml")).unwrap();
        let second = std::fs::read_to_string(sink.dir.join("2.eml")).unwrap();
        assert!(first.contains("Subject: Your Alcove sign-in code: 123456"), "{first}");
        assert!(second.contains("654321"), "{second}");
        assert_eq!(first_free(&sink.dir), 3);
    }
}
