// Top-ups in Debian's chromium: the billing page loads localstripe's Stripe.js stand-in, the
// card is typed into its card field, and the credit appears when the operator's webhook has
// credited it. A second payment needs 3-D Secure, finished in the page. tests/dashboard_billing.rs
// starts the platform, runs this and checks the tenant and Stripe against what it prints.
//
// Environment: DASHBOARD_URL, MAILDIR, OUT (screenshots), OWNER, TENANT.
import { check, env, launch, phone, screenshots, signIn, typeCard } from "./common.mjs";

const [url, maildir, out] = [env("DASHBOARD_URL"), env("MAILDIR"), env("OUT")];
const [owner, tenant] = [env("OWNER"), env("TENANT")];
const screenshot = screenshots(out);
const browser = await launch();
const result = {};
try {
  const { page, problems } = await phone(browser);
  await signIn(page, url, maildir, owner, 0);
  await page.getByRole("link", { name: /USD/ }).first().click();
  await page.getByRole("heading", { name: "Credit and billing" }).waitFor();
  await page.getByText("Your credit is used up").waitFor();
  await screenshot(page, "billing-empty");

  const pay = page.getByRole("button", { name: "Pay and add credit" });

  // Too little: refused beside the amount, nothing charged.
  await typeCard(page, "4242424242424242");
  await page.getByLabel("Amount (USD)").fill("1");
  await pay.click();
  await page.locator("#amount-error").getByText("Top up between 5.00 USD and 10,000.00 USD.").waitFor();
  await screenshot(page, "amount-refused");

  // 25 USD with the test card: the credit arrives through the webhook and the balance shows it.
  await page.getByLabel("Amount (USD)").fill("25");
  await pay.click();
  await page.locator("#pay-status").getByText("Payment received").waitFor();
  check(!(await page.locator("#amount-error").isVisible()), "the amount's error is gone");
  await page.locator("#balance-amount").getByText("25.00 USD").waitFor({ timeout: 30_000 });
  await screenshot(page, "credited");

  // A card whose bank asks for 3-D Secure: Stripe.js asks the customer to confirm in the page.
  await typeCard(page, "4000002500003155");
  await page.getByLabel("Amount (USD)").fill("10");
  await pay.click();
  const confirm = page.getByRole("button", { name: "Complete authentication" });
  await confirm.waitFor();
  await screenshot(page, "three-d-secure");
  await confirm.click();
  await page.locator("#pay-status").getByText("Payment received").waitFor();
  await page.locator("#balance-amount").getByText("35.00 USD").waitFor({ timeout: 30_000 });

  // The history shows both; a receipt downloads as a file.
  await page.reload();
  const rows = page.locator("#history tbody tr", { hasText: "Top-up by card" });
  await rows.first().waitFor();
  result.top_ups = await rows.count();
  await screenshot(page, "history");
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    rows.first().getByRole("link", { name: "Receipt" }).click(),
  ]);
  result.receipt = download.suggestedFilename();
  check(problems.length === 0, `the page ran without errors: ${problems.join("; ")}`);
  result.ok = true;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
