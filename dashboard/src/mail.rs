//! Sign-in codes and notices go out by mail over SMTP (lettre). The relay is a URL: `smtp://host:port` in
//! plain text (a loopback sink, as in `alcove up` and the tests), `smtp://host:587?tls=required`
//! for STARTTLS, `smtps://host:465` for TLS from the start; `user:password@` for relays that
//! ask. Nothing here logs: a message may hold a code, and errors carry only the relay's words.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::codes::{Address, VALID_FOR};

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("the mail relay URL: {0}")]
    Relay(String),
    #[error("the sender address {0:?}: {1}")]
    From(String, String),
    #[error("the recipient address is not one mail can be sent to")]
    To,
    #[error("composing the message: {0}")]
    Compose(String),
    #[error("the mail relay refused or could not be reached: {0}")]
    Send(String),
}

impl Mailer {
    /// `relay`: the SMTP URL; `from`: the sender, e.g. `Alcove <no-reply@alcove.example>`.
    pub fn new(relay: &str, from: &str) -> Result<Mailer, MailError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(relay)
            // The URL may hold a password: say what is wrong without repeating it.
            .map_err(|e| MailError::Relay(e.to_string()))?
            .timeout(Some(Duration::from_secs(15)))
            .build();
        let from = from.parse().map_err(|e: lettre::address::AddressError| {
            MailError::From(from.to_string(), e.to_string())
        })?;
        Ok(Mailer { transport, from })
    }

    /// The message that carries a sign-in code.
    pub fn code_message(&self, to: &Address, code: &str) -> Result<Message, MailError> {
        let to: lettre::Address = to.as_str().parse().map_err(|_| MailError::To)?;
        let minutes = VALID_FOR.as_secs() / 60;
        Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(format!("Your Alcove sign-in code: {code}"))
            .header(ContentType::TEXT_PLAIN)
            .body(format!(
                "Your sign-in code is\n\n    {code}\n\nEnter it on the sign-in page within \
                 {minutes} minutes. It works once.\n\nIf you did not ask to sign in, ignore this \
                 message: nobody can sign in without the code.\n"
            ))
            .map_err(|e| MailError::Compose(e.to_string()))
    }

    /// A plain-text message (the notices): the address is a Tenant owner's, checked by lettre.
    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), MailError> {
        let to: lettre::Address = to.parse().map_err(|_| MailError::To)?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_string())
            .map_err(|e| MailError::Compose(e.to_string()))?;
        self.transport.send(message).await.map_err(|e| MailError::Send(e.to_string()))?;
        Ok(())
    }

    /// The code that proves a new account's address is the customer's.
    pub async fn send_signup_code(&self, to: &Address, code: &str) -> Result<(), MailError> {
        let minutes = VALID_FOR.as_secs() / 60;
        let body = format!(
            "Your code to create an Alcove account is\n\n    {code}\n\nEnter it on the sign-up \
             page within {minutes} minutes. It works once.\n\nIf you did not ask for an \
             account, ignore this message: nothing is made without the code.\n"
        );
        self.send(to.as_str(), &format!("Your Alcove sign-up code: {code}"), &body).await
    }

    /// The code that proves a new contact address is the customer's.
    pub async fn send_contact_code(
        &self,
        to: &Address,
        code: &str,
        who: &str,
        account: &str,
    ) -> Result<(), MailError> {
        let minutes = VALID_FOR.as_secs() / 60;
        let body = format!(
            "{who} asked Alcove to send the notices of the account {account} (credit, deletion, \
             erasure) to this address. To confirm, enter this code on the page within {minutes} \
             minutes:\n\n    {code}\n\nIf you do not know about this, ignore this message: \
             nothing changes without the code.\n"
        );
        self.send(to.as_str(), &format!("Your Alcove confirmation code: {code}"), &body).await
    }

    pub async fn send_code(&self, to: &Address, code: &str) -> Result<(), MailError> {
        let message = self.code_message(to, code)?;
        self.transport.send(message).await.map_err(|e| MailError::Send(e.to_string()))?;
        Ok(())
    }
}
