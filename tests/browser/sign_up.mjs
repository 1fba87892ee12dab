// Self sign-up in Debian's chromium: from the sign-in page to "Create an account", refusals
// beside the fields, the code mailed to the new address (a wrong one refused), then the new
// account's own page. tests/dashboard.rs checks the Tenant it made.
//
// Environment: DASHBOARD_URL, MAILDIR, OUT (screenshots), EMAIL, ACCOUNT.
import { check, code, env, launch, phone, screenshots } from "./common.mjs";

const [url, maildir, out] = [env("DASHBOARD_URL"), env("MAILDIR"), env("OUT")];
const [email, account] = [env("EMAIL"), env("ACCOUNT")];
const screenshot = screenshots(out);
const browser = await launch();
const result = {};
try {
  const { page, problems } = await phone(browser);
  await page.goto(`${url}/signin`);
  await page.getByRole("link", { name: "Create an account" }).click();
  await page.getByRole("heading", { name: "Create an account" }).waitFor();
  await page.getByRole("button", { name: "Email me a code" }).click();
  await page.locator("#email-error").waitFor();
  await page.locator("#display_name-error").getByText("Give the account a name.").waitFor();
  await screenshot(page, "sign-up-refused");

  await page.getByLabel("Email address").fill(email);
  await page.getByLabel("Account name").fill(account);
  await page.getByRole("button", { name: "Email me a code" }).click();
  const mailed = await code(maildir, email.toLowerCase(), 0);
  await page.getByLabel("6-digit code").fill(mailed === "000000" ? "111111" : "000000");
  await page.getByRole("button", { name: "Create my account" }).click();
  await page.locator("#code-error").waitFor();
  await screenshot(page, "sign-up-wrong-code");
  await page.getByLabel("6-digit code").fill(mailed);
  await page.getByRole("button", { name: "Create my account" }).click();
  await page.waitForURL(/\/t\/[a-z0-9-]+$/);
  result.tenant = new URL(page.url()).pathname.split("/")[2];
  await page.getByRole("link", { name: "New instance" }).waitFor();
  await page.getByText(account).first().waitFor();
  await screenshot(page, "sign-up-done");
  check(problems.length === 0, `the pages ran without errors: ${problems.join("; ")}`);
  result.ok = true;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
