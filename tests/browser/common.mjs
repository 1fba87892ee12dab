// What every browser journey shares: its settings, the mailed codes, numbered screenshots, and
// Debian's chromium on a phone-sized page (playwright-core drives it; no browser is downloaded).
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

export const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function check(cond, what) {
  if (!cond) throw new Error(what);
}

// The code in the n-th code message to `to` (0-based; notices are not counted) in the SMTP
// server's maildir, once it arrived.
export async function code(maildir, to, n) {
  for (let i = 0; i < 100; i++) {
    const dir = path.join(maildir, "new");
    const mails = fs.existsSync(dir)
      ? fs.readdirSync(dir)
          .map((f) => path.join(dir, f))
          .sort((a, b) => fs.statSync(a).mtimeMs - fs.statSync(b).mtimeMs)
          .map((f) => fs.readFileSync(f, "utf8"))
          .filter((m) => m.includes(`To: ${to}`) && /Subject: .*code: \d{6}/.test(m))
      : [];
    if (mails.length > n) return mails[n].match(/Subject: .* (\d{6})/)[1];
    await sleep(200);
  }
  throw new Error(`no mail ${n} to ${to}`);
}

// Full-page screenshots, numbered in the order taken, under `out`.
export function screenshots(out) {
  fs.mkdirSync(out, { recursive: true });
  let shot = 0;
  return async (page, name) => {
    shot += 1;
    await page.screenshot({ path: path.join(out, `${String(shot).padStart(2, "0")}-${name}.png`), fullPage: true });
  };
}

export async function launch() {
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

// A phone-sized page that collects its scripts' errors (a refused form's 4xx status is not one).
export async function phone(browser) {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, acceptDownloads: true });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && problems.push(`console: ${m.text()}`));
  page.on("dialog", (d) => d.accept());
  return { context, page, problems };
}

// Types a test card into the billing page's card field (localstripe's Stripe.js stand-in).
export async function typeCard(page, number) {
  const card = page.locator("#card-element");
  await card.locator('input[placeholder="number"]').fill(number);
  await card.locator('input[placeholder="exp_month"]').fill("12");
  await card.locator('input[placeholder="exp_year"]').fill("34");
  await card.locator('input[placeholder="cvc"]').fill("123");
  await card.locator('input[placeholder="postal_code"]').fill("10001");
}

// Signs in with the code mailed to `email` (its n-th message).
export async function signIn(page, url, maildir, email, n) {
  await page.goto(url);
  await page.getByLabel("Email address").fill(email);
  await page.getByRole("button", { name: "Email me a code" }).click();
  await page.getByLabel("6-digit code").fill(await code(maildir, email, n));
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Your tenants" }).waitFor();
}
