//! A sign-in code reaches a real SMTP server: aiosmtpd (PyPI; `./test.sh` installs it into
//! `.venv`) on a free loopback port, storing what it receives in a maildir.

use std::time::Duration;

use alcove_dashboard::codes::Address;
use alcove_dashboard::mail::{MailError, Mailer};
use alcove_testkit::smtp::Smtp;
use alcove_testkit::{free_port, until_some};

#[tokio::test]
async fn a_sign_in_code_is_delivered_over_smtp() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path().join("mail")).await;
    let port = smtp.port;

    let mailer =
        Mailer::new(&format!("smtp://127.0.0.1:{port}"), "Alcove <no-reply@alcove.test>").unwrap();
    let to = Address::parse("Ada@Example.com").unwrap();
    // The server takes a moment to listen: the first sends may find nobody there.
    until_some("aiosmtpd takes the message", Duration::from_secs(30), || async {
        match mailer.send_code(&to, "042917").await {
            Ok(()) => Some(()),
            Err(MailError::Send(_)) => None,
            Err(e) => panic!("{e}"),
        }
    })
    .await;

    let mails = smtp.received();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let mail = &mails[0];
    assert!(mail.contains("To: ada@example.com"), "{mail}");
    assert!(mail.contains("From: Alcove <no-reply@alcove.test>"), "{mail}");
    assert!(mail.contains("Subject: Your Alcove sign-in code: 042917"), "{mail}");
    assert!(mail.contains("Content-Type: text/plain"), "{mail}");
    assert!(mail.contains("\n    042917"), "{mail}");
    assert!(mail.contains("within 10 minutes"), "{mail}");
}

#[tokio::test]
async fn a_relay_that_is_not_there_is_an_error_not_a_hang() {
    let mailer = Mailer::new(&format!("smtp://127.0.0.1:{}", free_port()), "a@b.test").unwrap();
    let to = Address::parse("ada@example.com").unwrap();
    let started = std::time::Instant::now();
    let err = mailer.send_code(&to, "123456").await.unwrap_err();
    assert!(matches!(err, MailError::Send(_)), "{err}");
    assert!(!err.to_string().contains("123456"), "errors never carry the code: {err}");
    assert!(started.elapsed() < Duration::from_secs(16));
}

// In a runtime: the connection pool starts a task.
#[tokio::test]
async fn bad_configuration_is_named() {
    assert!(matches!(Mailer::new("http://x", "a@b.test"), Err(MailError::Relay(_))));
    let err = Mailer::new("smtp://127.0.0.1:25", "not an address").err().unwrap();
    assert!(err.to_string().contains("not an address"), "{err}");
}
