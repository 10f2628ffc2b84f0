/* Unit tests for wc_webhook: signatures against vectors computed outside
 * this code (RFC 4231 and `openssl dgst -sha256 -hmac`), both providers'
 * envelopes as their documentation shows them, malformed and hostile bodies
 * (every truncation, wrong types, deep nesting, huge arrays, random byte
 * flips), and opt-out words. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "wc_webhook.h"

/* --- signatures --------------------------------------------------------- */

/* RFC 4231 test case 2. */
#define JEFE_DATA "what do ya want for nothing?"
#define JEFE_SIG "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"

/* A Meta status webhook signed with `openssl dgst -sha256 -hmac app-secret-123`. */
static const char META_DELIVERED[] =
    "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"100000000000001\",\"changes\":["
    "{"
    "\"value\":{\"messaging_product\":\"whatsapp\",\"metadata\":{\"display_phone_number\":"
    "\"60300000000\",\"phone_number_id\":\"106540352242922\"},\"statuses\":[{\"id\":\"wamid."
    "HBgLNjAxMjM0NTY3ODkVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA\",\"status\":\"delivered\","
    "\"timestamp\":\"1763700000\",\"recipient_id\":\"60123456789\",\"biz_opaque_callback_data\":"
    "\"msg:42\"}]},\"field\":\"messages\"}]}]}";
#define META_DELIVERED_SIG "sha256=b1bf2e2d19a8d31e4453e7a6e89926d0dd2ae23a1f942944f8e49ce88eb93957"

static bool verify_str(const char *secret, const char *body, const char *header)
{
    return wc_webhook_verify(secret, (const unsigned char *)body, strlen(body), header);
}

static void test_verify_known_vectors(void **state)
{
    assert_true(verify_str("Jefe", JEFE_DATA, JEFE_SIG));
    assert_true(verify_str("app-secret-123", META_DELIVERED, META_DELIVERED_SIG));
    assert_true(
        verify_str("secret", "hello",
                   "sha256=88aab3ede8d3adf94d26ab90d3bafd4a2083070c3bcce9c014ee04a443847c0b"));
    /* The empty body is a body too. */
    assert_true(wc_webhook_verify(
        "secret", NULL, 0,
        "sha256=f9e66e179b6747ae54108f82f8ade8b3c25d76fd30afde6c395822c530196169"));
    /* Hex digits in either case. */
    assert_true(
        verify_str("Jefe", JEFE_DATA,
                   "sha256=5BDCC146BF60754E6A042426089575C75A003F089D2739839DEC58B964EC3843"));
}

static void test_verify_rejects(void **state)
{
    char forged[] = JEFE_SIG;
    forged[strlen(forged) - 1] = forged[strlen(forged) - 1] == '3' ? '4' : '3';

    assert_false(verify_str("Jefe", JEFE_DATA, forged));
    assert_false(verify_str("Jefe", JEFE_DATA " ", JEFE_SIG)); /* body changed */
    assert_false(verify_str("jefe", JEFE_DATA, JEFE_SIG));     /* wrong secret */
    assert_false(verify_str("Jefe", JEFE_DATA, NULL));         /* missing header */
    assert_false(verify_str("Jefe", JEFE_DATA, ""));
    assert_false(verify_str("Jefe", JEFE_DATA, "sha256="));
    assert_false(
        verify_str("Jefe", JEFE_DATA,
                   "sha1=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"));
    assert_false(
        verify_str("Jefe", JEFE_DATA,
                   "SHA256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"));
    assert_false(verify_str("Jefe", JEFE_DATA,
                            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"));
    /* One digit short, one too many, trailing space, a non-hex digit. */
    assert_false(
        verify_str("Jefe", JEFE_DATA,
                   "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec384"));
    assert_false(
        verify_str("Jefe", JEFE_DATA,
                   "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec38430"));
    assert_false(verify_str("Jefe", JEFE_DATA, JEFE_SIG " "));
    assert_false(
        verify_str("Jefe", JEFE_DATA,
                   "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec384g"));
    /* No secret means nothing is trusted, not everything. */
    assert_false(verify_str("", JEFE_DATA, JEFE_SIG));
    assert_false(verify_str(NULL, JEFE_DATA, JEFE_SIG));
    assert_false(wc_webhook_verify("Jefe", NULL, 5, JEFE_SIG));
}

static void test_sign(void **state)
{
    char sig[WC_WEBHOOK_SIGNATURE_LEN];
    assert_int_equal(wc_webhook_sign("Jefe", (const unsigned char *)JEFE_DATA, strlen(JEFE_DATA),
                                     sig, sizeof sig),
                     0);
    assert_string_equal(sig, JEFE_SIG);
    assert_int_equal(wc_webhook_sign("app-secret-123", (const unsigned char *)META_DELIVERED,
                                     strlen(META_DELIVERED), sig, sizeof sig),
                     0);
    assert_string_equal(sig, META_DELIVERED_SIG);
    assert_int_equal(wc_webhook_sign("Jefe", (const unsigned char *)"x", 1, sig, sizeof sig - 1),
                     -1);
    assert_string_equal(sig, "");
    assert_int_equal(wc_webhook_sign("", (const unsigned char *)"x", 1, sig, sizeof sig), -1);
}

/* --- parsing: helpers --------------------------------------------------- */

static int parse(wc_webhook_provider provider, const char *body, wc_webhook_events *ev, char *err,
                 size_t errlen)
{
    return wc_webhook_parse(provider, body, body ? strlen(body) : 0, 0, 0, ev, err, errlen);
}

static void parse_ok_at(wc_webhook_provider provider, const char *body, wc_webhook_events *ev,
                        const char *file, int line)
{
    char err[256] = "unset";
    if (parse(provider, body, ev, err, sizeof err) != 0)
        fail_msg("%s:%d: parse failed: %s\nbody: %s", file, line, err, body);
}

static void parse_fails_at(wc_webhook_provider provider, const char *body, const char *want_in_err,
                           const char *file, int line)
{
    wc_webhook_events ev;
    char err[256] = "";
    memset(&ev, 0x5a, sizeof ev);
    if (parse(provider, body, &ev, err, sizeof err) != -1) {
        fail_msg("%s:%d: parse accepted a bad body (%zu events)\nbody: %s", file, line, ev.count,
                 body ? body : "NULL");
    }
    if (ev.count != 0 || ev.items != NULL)
        fail_msg("%s:%d: events not emptied on failure", file, line);
    if (!strstr(err, want_in_err))
        fail_msg("%s:%d: error \"%s\" does not mention \"%s\"", file, line, err, want_in_err);
}

#define parse_ok(provider, body, ev) parse_ok_at(provider, body, ev, __FILE__, __LINE__)
#define parse_fails(provider, body, want) parse_fails_at(provider, body, want, __FILE__, __LINE__)

/* A Cloud API envelope around one value object. */
#define META_ENVELOPE(value)                                                                       \
    "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"WABA\",\"changes\":[{"         \
    "\"value\":{\"messaging_product\":\"whatsapp\",\"metadata\":{\"display_phone_number\":"        \
    "\"60300000000\",\"phone_number_id\":\"PNID\"}," value "},\"field\":\"messages\"}]}]}"

/* --- parsing: Meta ------------------------------------------------------ */

static void test_meta_delivered(void **state)
{
    wc_webhook_events ev;
    parse_ok(WC_WEBHOOK_CLOUDAPI, META_DELIVERED, &ev);
    assert_int_equal(ev.count, 1);
    assert_int_equal(ev.ignored, 0);
    assert_false(ev.truncated);
    const wc_webhook_event *e = &ev.items[0];
    assert_int_equal(e->kind, WC_WEBHOOK_STATUS);
    assert_string_equal(e->provider, "cloudapi");
    assert_string_equal(e->provider_id,
                        "wamid.HBgLNjAxMjM0NTY3ODkVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA");
    assert_int_equal(e->status, WC_WEBHOOK_DELIVERED);
    assert_string_equal(wc_webhook_status_name(e->status), "delivered");
    assert_string_equal(e->callback_data, "msg:42");
    assert_string_equal(e->peer, "60123456789");
    assert_string_equal(e->receiver, "106540352242922");
    assert_int_equal(e->timestamp, 1763700000);
    assert_int_equal(e->error_code, 0);
    assert_null(e->error_title);
    assert_null(e->text);
    wc_webhook_events_free(&ev);
    assert_null(ev.items);
    /* AUTO recognises it too. */
    parse_ok(WC_WEBHOOK_AUTO, META_DELIVERED, &ev);
    assert_int_equal(ev.count, 1);
    wc_webhook_events_free(&ev);
}

static void test_meta_read_and_failed(void **state)
{
    wc_webhook_events ev;
    /* Several statuses in one body; read without callback data; failed with
     * Meta's errors[]; a status wacast does not track is counted, not kept. */
    parse_ok(WC_WEBHOOK_CLOUDAPI,
             META_ENVELOPE(
                 "\"statuses\":["
                 "{\"id\":\"wamid.A\",\"status\":\"read\",\"timestamp\":\"1763700100\","
                 "\"recipient_id\":\"60123456789\"},"
                 "{\"id\":\"wamid.B\",\"status\":\"failed\",\"timestamp\":\"1763700200\","
                 "\"recipient_id\":\"60111111111\",\"biz_opaque_callback_data\":\"msg:7\","
                 "\"errors\":[{\"code\":131026,\"title\":\"Message undeliverable\",\"message\":"
                 "\"Message Undeliverable.\",\"error_data\":{\"details\":\"Message Undeliverable."
                 "\"},\"href\":\"https://developers.facebook.com/docs/whatsapp/\"}]},"
                 "{\"id\":\"wamid.C\",\"status\":\"deleted\",\"timestamp\":\"1763700300\"}]"),
             &ev);
    assert_int_equal(ev.count, 2);
    assert_int_equal(ev.ignored, 1);
    assert_int_equal(ev.items[0].status, WC_WEBHOOK_READ);
    assert_null(ev.items[0].callback_data);
    const wc_webhook_event *f = &ev.items[1];
    assert_int_equal(f->status, WC_WEBHOOK_FAILED);
    assert_string_equal(wc_webhook_status_name(f->status), "failed");
    assert_string_equal(f->provider_id, "wamid.B");
    assert_string_equal(f->callback_data, "msg:7");
    assert_int_equal(f->error_code, 131026);
    assert_string_equal(f->error_title, "Message undeliverable");
    assert_string_equal(f->error_message, "Message Undeliverable.");
    assert_string_equal(f->error_details, "Message Undeliverable.");
    assert_string_equal(f->receiver, "PNID");
    wc_webhook_events_free(&ev);

    /* Meta's other codes come through as numbers, whatever the title says. */
    parse_ok(WC_WEBHOOK_CLOUDAPI,
             META_ENVELOPE("\"statuses\":[{\"id\":\"wamid.D\",\"status\":\"failed\","
                           "\"timestamp\":1763700400,\"recipient_id\":\"60123456789\","
                           "\"errors\":[{\"code\":131050}]}]"),
             &ev);
    assert_int_equal(ev.count, 1);
    assert_int_equal(ev.items[0].error_code, 131050);
    assert_int_equal(ev.items[0].timestamp, 1763700400);
    assert_null(ev.items[0].error_title);
    wc_webhook_events_free(&ev);
}

static void test_meta_inbound(void **state)
{
    wc_webhook_events ev;
    parse_ok(WC_WEBHOOK_AUTO,
             META_ENVELOPE("\"contacts\":[{\"profile\":{\"name\":\"Aisyah\"},\"wa_id\":"
                           "\"60123456789\"}],\"messages\":[{\"from\":\"60123456789\",\"id\":"
                           "\"wamid.IN1\",\"timestamp\":\"1763700500\",\"type\":\"text\","
                           "\"text\":{\"body\":\"STOP\"}}]"),
             &ev);
    assert_int_equal(ev.count, 1);
    const wc_webhook_event *e = &ev.items[0];
    assert_int_equal(e->kind, WC_WEBHOOK_INBOUND);
    assert_int_equal(e->status, 0);
    assert_string_equal(e->provider_id, "wamid.IN1");
    assert_string_equal(e->peer, "60123456789");
    assert_string_equal(e->receiver, "PNID");
    assert_string_equal(e->message_type, "text");
    assert_string_equal(e->text, "STOP");
    assert_string_equal(e->sender_name, "Aisyah");
    assert_int_equal(e->timestamp, 1763700500);
    assert_true(wc_webhook_is_opt_out(e->text, NULL));
    wc_webhook_events_free(&ev);

    /* A marketing template's "Stop promotions" quick reply, an interactive
     * reply and an image: the words are kept where there are any. */
    parse_ok(
        WC_WEBHOOK_CLOUDAPI,
        META_ENVELOPE(
            "\"messages\":["
            "{\"from\":\"601\",\"id\":\"wamid.b\",\"timestamp\":\"1\",\"type\":\"button\","
            "\"button\":{\"payload\":\"STOP\",\"text\":\"Stop promotions\"}},"
            "{\"from\":\"602\",\"id\":\"wamid.i\",\"timestamp\":\"2\",\"type\":\"interactive\","
            "\"interactive\":{\"type\":\"button_reply\",\"button_reply\":{\"id\":\"x\","
            "\"title\":\"Unsubscribe\"}}},"
            "{\"from\":\"603\",\"id\":\"wamid.m\",\"timestamp\":\"3\",\"type\":\"image\","
            "\"image\":{\"id\":\"123\",\"mime_type\":\"image/jpeg\"}}]"),
        &ev);
    assert_int_equal(ev.count, 3);
    assert_string_equal(ev.items[0].text, "Stop promotions");
    assert_string_equal(ev.items[0].message_type, "button");
    assert_null(ev.items[0].sender_name);
    assert_string_equal(ev.items[1].text, "Unsubscribe");
    assert_true(wc_webhook_is_opt_out(ev.items[1].text, NULL));
    assert_string_equal(ev.items[2].message_type, "image");
    assert_null(ev.items[2].text);
    wc_webhook_events_free(&ev);
}

static void test_meta_other_fields_ignored(void **state)
{
    wc_webhook_events ev;
    parse_ok(WC_WEBHOOK_CLOUDAPI,
             "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"W\",\"changes\":["
             "{\"field\":\"message_template_status_update\",\"value\":{\"event\":\"APPROVED\"}},"
             "{\"field\":\"messages\",\"value\":{\"errors\":[{\"code\":131000}]}}]},"
             "{\"id\":\"W2\",\"changes\":[]}]}",
             &ev);
    assert_int_equal(ev.count, 0);
    assert_int_equal(ev.ignored, 2);
    wc_webhook_events_free(&ev);
}

/* --- parsing: gowa ------------------------------------------------------ */

static void test_gowa_ack(void **state)
{
    wc_webhook_events ev;
    parse_ok(
        WC_WEBHOOK_GOWA,
        "{\"event\":\"message.ack\",\"device_id\":\"60300000001@s.whatsapp.net\","
        "\"timestamp\":\"2025-07-18T22:44:20Z\",\"payload\":{\"ids\":[\"3EB00106E8BE0F407E88EC\","
        "\"3EB0AAAAAAAAAAAAAAAAAA\"],\"chat_id\":\"60123456789@s.whatsapp.net\",\"from\":"
        "\"60123456789:12@s.whatsapp.net\",\"receipt_type\":\"delivered\","
        "\"receipt_type_description\":\"means the message was delivered to the device\"}}",
        &ev);
    assert_int_equal(ev.count, 2);
    for (size_t i = 0; i < 2; i++) {
        const wc_webhook_event *e = &ev.items[i];
        assert_int_equal(e->kind, WC_WEBHOOK_STATUS);
        assert_string_equal(e->provider, "gowa");
        assert_int_equal(e->status, WC_WEBHOOK_DELIVERED);
        assert_string_equal(e->peer, "60123456789");
        assert_string_equal(e->receiver, "60300000001@s.whatsapp.net");
        assert_int_equal(e->timestamp, 1752878660); /* date -d 2025-07-18T22:44:20Z +%s */
        assert_null(e->callback_data);
    }
    assert_string_equal(ev.items[1].provider_id, "3EB0AAAAAAAAAAAAAAAAAA");
    wc_webhook_events_free(&ev);

    /* AUTO: no "object" means gowa. An offset time is converted to UTC. */
    parse_ok(WC_WEBHOOK_AUTO,
             "{\"event\":\"message.ack\",\"device_id\":\"d\",\"timestamp\":"
             "\"2025-07-19T05:44:44.123+07:00\",\"payload\":{\"ids\":[\"3EB0X\"],"
             "\"receipt_type\":\"read\"}}",
             &ev);
    assert_int_equal(ev.count, 1);
    assert_int_equal(ev.items[0].status, WC_WEBHOOK_READ);
    assert_int_equal(ev.items[0].timestamp, 1752878684);
    assert_null(ev.items[0].peer);
    wc_webhook_events_free(&ev);

    /* A JID with no user part is no peer (not ""). */
    parse_ok(WC_WEBHOOK_GOWA,
             "{\"event\":\"message.ack\",\"payload\":{\"ids\":[\"3EB0X\"],\"receipt_type\":"
             "\"read\",\"from\":\":3@s.whatsapp.net\"}}",
             &ev);
    assert_int_equal(ev.count, 1);
    assert_null(ev.items[0].peer);
    wc_webhook_events_free(&ev);

    /* Receipts about our other devices are not statuses. */
    parse_ok(WC_WEBHOOK_GOWA,
             "{\"event\":\"message.ack\",\"payload\":{\"ids\":[\"3EB0X\"],\"receipt_type\":"
             "\"read_self\"}}",
             &ev);
    assert_int_equal(ev.count, 0);
    assert_int_equal(ev.ignored, 1);
    wc_webhook_events_free(&ev);
}

static void test_gowa_inbound(void **state)
{
    wc_webhook_events ev;
    parse_ok(WC_WEBHOOK_GOWA,
             "{\"event\":\"message\",\"device_id\":\"60300000002@s.whatsapp.net\",\"payload\":{"
             "\"id\":\"3EB0C127D7BACC83D6A1\",\"chat_id\":\"60123456789@s.whatsapp.net\","
             "\"from\":\"60123456789@s.whatsapp.net\",\"from_lid\":\"251556368777322@lid\","
             "\"from_name\":\"Budi\",\"timestamp\":\"2023-10-15T10:30:00Z\",\"is_from_me\":false,"
             "\"body\":\" Berhenti \"}}",
             &ev);
    assert_int_equal(ev.count, 1);
    const wc_webhook_event *e = &ev.items[0];
    assert_int_equal(e->kind, WC_WEBHOOK_INBOUND);
    assert_string_equal(e->provider_id, "3EB0C127D7BACC83D6A1");
    assert_string_equal(e->peer, "60123456789");
    assert_string_equal(e->receiver, "60300000002@s.whatsapp.net");
    assert_string_equal(e->sender_name, "Budi");
    assert_string_equal(e->text, " Berhenti ");
    assert_string_equal(e->message_type, "text");
    assert_int_equal(e->timestamp, 1697365800);
    assert_true(wc_webhook_is_opt_out(e->text, NULL));
    wc_webhook_events_free(&ev);

    /* Our own message echoed back, a group chat, another event: not inbound. */
    parse_ok(WC_WEBHOOK_GOWA,
             "{\"event\":\"message\",\"payload\":{\"id\":\"3EB0A\",\"from\":\"601@s.whatsapp.net\","
             "\"is_from_me\":true,\"body\":\"hi\"}}",
             &ev);
    assert_int_equal(ev.count, 0);
    assert_int_equal(ev.ignored, 1);
    wc_webhook_events_free(&ev);
    parse_ok(WC_WEBHOOK_GOWA,
             "{\"event\":\"message\",\"payload\":{\"id\":\"3EB0A\",\"from\":\"601@s.whatsapp.net\","
             "\"chat_id\":\"120363402106@g.us\",\"body\":\"stop\"}}",
             &ev);
    assert_int_equal(ev.count, 0);
    wc_webhook_events_free(&ev);
    parse_ok(WC_WEBHOOK_GOWA,
             "{\"event\":\"group.participants\",\"payload\":{\"chat_id\":\"1@g.us\",\"type\":"
             "\"join\",\"jids\":[]}}",
             &ev);
    assert_int_equal(ev.count, 0);
    assert_int_equal(ev.ignored, 1);
    wc_webhook_events_free(&ev);

    /* The older gateway's flat shape. */
    parse_ok(
        WC_WEBHOOK_GOWA,
        "{\"sender_id\":\"60123456789\",\"chat_id\":\"60123456789\",\"from\":"
        "\"60123456789@s.whatsapp.net\",\"timestamp\":\"2023-10-15T10:30:00Z\",\"pushname\":"
        "\"John\",\"message\":{\"text\":\"unsubscribe\",\"id\":\"3EB0OLD\",\"replied_id\":\"\"}}",
        &ev);
    assert_int_equal(ev.count, 1);
    assert_string_equal(ev.items[0].provider_id, "3EB0OLD");
    assert_string_equal(ev.items[0].text, "unsubscribe");
    assert_string_equal(ev.items[0].sender_name, "John");
    assert_null(ev.items[0].receiver);
    wc_webhook_events_free(&ev);
}

/* --- parsing: malformed and hostile bodies ------------------------------ */

static void test_malformed(void **state)
{
    parse_fails(WC_WEBHOOK_AUTO, NULL, "empty body");
    parse_fails(WC_WEBHOOK_AUTO, "", "empty body");
    parse_fails(WC_WEBHOOK_AUTO, "{\"object\":", "invalid JSON");
    parse_fails(WC_WEBHOOK_AUTO, "[1,2]", "must be a JSON object");
    parse_fails(WC_WEBHOOK_AUTO, "\"hello\"", "must be a JSON object");
    parse_fails(WC_WEBHOOK_AUTO, "{\"a\":1,\"a\":2}", "invalid JSON");
    parse_fails(WC_WEBHOOK_AUTO, "{\"hello\":1}", "not a gowa webhook");
    parse_fails(WC_WEBHOOK_CLOUDAPI, "{\"object\":\"page\",\"entry\":[]}",
                "whatsapp_business_account");
    parse_fails(WC_WEBHOOK_CLOUDAPI, "{\"event\":\"message.ack\"}", "\"object\" is missing");
    parse_fails(WC_WEBHOOK_GOWA, META_DELIVERED, "no \"event\"");
    /* Found by tests/fuzz/fuzz_webhook_gowa.c: a sender JID with no user part
     * gave an inbound message from "". */
    parse_fails(WC_WEBHOOK_GOWA,
                "{\"event\":\"message\",\"payload\":{\"id\":\"3EB0U\",\"from\":"
                "\"@60123456789:3@s.whatsapp.net\",\"body\":\"stop\"}}",
                "\"from\" has no user part");
    parse_fails(WC_WEBHOOK_GOWA,
                "{\"from\":\":3@s.whatsapp.net\",\"message\":{\"text\":\"stop\",\"id\":\"3EB0\"}}",
                "\"from\" has no user part");
    parse_fails(WC_WEBHOOK_CLOUDAPI, "{\"object\":\"whatsapp_business_account\",\"entry\":{}}",
                "\"entry\" must be an array, not an object");
    parse_fails(WC_WEBHOOK_CLOUDAPI,
                "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"changes\":[{\"field\":"
                "\"messages\"}]}]}",
                "entry[0].changes[0]: \"value\" is missing");
    parse_fails(WC_WEBHOOK_CLOUDAPI, META_ENVELOPE("\"statuses\":{}"),
                "\"statuses\" must be an array");
    parse_fails(WC_WEBHOOK_CLOUDAPI, META_ENVELOPE("\"statuses\":[17]"),
                "statuses[0]: must be an object, not an integer");
    parse_fails(WC_WEBHOOK_CLOUDAPI, META_ENVELOPE("\"statuses\":[{\"status\":\"sent\"}]"),
                "statuses[0]: \"id\" is missing");
    parse_fails(WC_WEBHOOK_CLOUDAPI, META_ENVELOPE("\"statuses\":[{\"id\":7,\"status\":\"sent\"}]"),
                "\"id\" must be a string, not an integer");
    parse_fails(WC_WEBHOOK_CLOUDAPI, META_ENVELOPE("\"statuses\":[{\"id\":\"w\"}]"),
                "\"status\" is missing");
    parse_fails(WC_WEBHOOK_CLOUDAPI,
                META_ENVELOPE("\"statuses\":[{\"id\":\"w\",\"status\":\"sent\",\"timestamp\":"
                              "\"soon\"}]"),
                "not unix seconds");
    parse_fails(WC_WEBHOOK_CLOUDAPI,
                META_ENVELOPE("\"statuses\":[{\"id\":\"w\",\"status\":\"failed\",\"errors\":[1]}]"),
                "statuses[0].errors[0]: must be an object");
    parse_fails(WC_WEBHOOK_CLOUDAPI,
                META_ENVELOPE("\"statuses\":[{\"id\":\"w\",\"status\":\"failed\",\"errors\":[{"
                              "\"code\":\"131026\"}]}]"),
                "\"code\" must be an integer, not a string");
    parse_fails(WC_WEBHOOK_CLOUDAPI,
                META_ENVELOPE("\"statuses\":[{\"id\":\"w\",\"status\":\"sent\","
                              "\"biz_opaque_callback_data\":{}}]"),
                "\"biz_opaque_callback_data\" must be a string");
    parse_fails(WC_WEBHOOK_CLOUDAPI,
                META_ENVELOPE("\"messages\":[{\"id\":\"w\",\"type\":\"text\",\"text\":{\"body\":"
                              "\"x\"}}]"),
                "messages[0]: \"from\" is missing");
    parse_fails(WC_WEBHOOK_CLOUDAPI,
                META_ENVELOPE("\"messages\":[{\"id\":\"w\",\"from\":\"6\",\"type\":\"text\","
                              "\"text\":{\"body\":5}}]"),
                "messages[0].text: \"body\" must be a string");
    parse_fails(WC_WEBHOOK_GOWA, "{\"event\":\"message.ack\"}", "\"payload\" is missing");
    parse_fails(
        WC_WEBHOOK_GOWA,
        "{\"event\":\"message.ack\",\"payload\":{\"ids\":\"3EB0\",\"receipt_type\":\"read\"}}",
        "\"ids\" must be an array");
    parse_fails(WC_WEBHOOK_GOWA,
                "{\"event\":\"message.ack\",\"payload\":{\"ids\":[],\"receipt_type\":\"read\"}}",
                "\"ids\" is empty");
    parse_fails(WC_WEBHOOK_GOWA,
                "{\"event\":\"message.ack\",\"payload\":{\"ids\":[\"a\",3],\"receipt_type\":"
                "\"read\"}}",
                "payload.ids[1]: must be a non-empty string");
    parse_fails(WC_WEBHOOK_GOWA, "{\"event\":\"message.ack\",\"payload\":{\"ids\":[\"a\"]}}",
                "\"receipt_type\" is missing");
    parse_fails(WC_WEBHOOK_GOWA,
                "{\"event\":\"message.ack\",\"timestamp\":\"yesterday\",\"payload\":{\"ids\":"
                "[\"a\"],\"receipt_type\":\"read\"}}",
                "not an RFC 3339 time");
    parse_fails(WC_WEBHOOK_GOWA,
                "{\"event\":\"message\",\"payload\":{\"id\":\"a\",\"from\":\"6@s.whatsapp.net\","
                "\"is_from_me\":\"no\"}}",
                "\"is_from_me\" must be a boolean");
    parse_fails(WC_WEBHOOK_GOWA, "{\"event\":\"message\",\"payload\":{\"id\":\"a\"}}",
                "payload: \"from\" is missing");
    parse_fails(WC_WEBHOOK_GOWA, "{\"event\":7}", "\"event\" must be a string");
}

static void test_body_limit(void **state)
{
    wc_webhook_events ev;
    char err[128];
    size_t len = strlen(META_DELIVERED);
    assert_int_equal(
        wc_webhook_parse(WC_WEBHOOK_AUTO, META_DELIVERED, len, len - 1, 0, &ev, err, sizeof err),
        -1);
    assert_non_null(strstr(err, "over the limit"));
    assert_int_equal(
        wc_webhook_parse(WC_WEBHOOK_AUTO, META_DELIVERED, len, len, 0, &ev, err, sizeof err), 0);
    wc_webhook_events_free(&ev);
    /* An embedded NUL ends nothing early: the length is what counts. */
    char with_nul[] = "{\"event\":\"x\"}\0garbage";
    assert_int_equal(wc_webhook_parse(WC_WEBHOOK_AUTO, with_nul, sizeof with_nul - 1, 0, 0, &ev,
                                      err, sizeof err),
                     -1);
}

/* Every strict prefix of a valid body is invalid JSON: all must fail cleanly. */
static void test_truncated_bodies(void **state)
{
    const char *bodies[] = {
        META_DELIVERED,
        "{\"event\":\"message.ack\",\"device_id\":\"d\",\"timestamp\":\"2025-07-18T22:44:20Z\","
        "\"payload\":{\"ids\":[\"3EB0A\"],\"receipt_type\":\"delivered\"}}",
    };
    for (size_t b = 0; b < sizeof bodies / sizeof bodies[0]; b++) {
        size_t len = strlen(bodies[b]);
        for (size_t n = 0; n < len; n++) {
            wc_webhook_events ev;
            char err[256];
            if (wc_webhook_parse(WC_WEBHOOK_AUTO, bodies[b], n, 0, 0, &ev, err, sizeof err) != -1)
                fail_msg("prefix of %zu bytes of body %zu was accepted", n, b);
            assert_true(err[0] != '\0');
        }
    }
}

static void test_deep_nesting(void **state)
{
    /* Far deeper than jansson's 2048 levels, inside a field we never read. */
    size_t depth = 100000;
    const char *head = "{\"event\":\"message.ack\",\"junk\":";
    size_t len = strlen(head) + 2 * depth + 1;
    char *body = malloc(len + 1);
    assert_non_null(body);
    char *p = body + strlen(head);
    memcpy(body, head, strlen(head));
    memset(p, '[', depth);
    memset(p + depth, ']', depth);
    p[2 * depth] = '}';
    body[len] = '\0';
    wc_webhook_events ev;
    char err[256];
    assert_int_equal(wc_webhook_parse(WC_WEBHOOK_AUTO, body, len, len, 0, &ev, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "invalid JSON"));
    free(body);
}

/* A body with n statuses (n <= 99999). */
static char *many_statuses(size_t n)
{
    const char *head = "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"changes\":[{"
                       "\"field\":\"messages\",\"value\":{\"statuses\":[";
    const char *tail = "]}}]}]}";
    size_t cap = strlen(head) + strlen(tail) + n * 64 + 1;
    char *body = malloc(cap);
    assert_non_null(body);
    size_t len = (size_t)snprintf(body, cap, "%s", head);
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(body + len, cap - len,
                                "%s{\"id\":\"wamid.%05zu\",\"status\":\"sent\"}", i ? "," : "", i);
    snprintf(body + len, cap - len, "%s", tail);
    return body;
}

static void test_huge_arrays_capped(void **state)
{
    wc_webhook_events ev;
    char err[256];
    char *body = many_statuses(2500);
    size_t len = strlen(body);

    assert_int_equal(
        wc_webhook_parse(WC_WEBHOOK_CLOUDAPI, body, len, 1u << 20, 0, &ev, err, sizeof err), 0);
    assert_int_equal(ev.count, WC_WEBHOOK_DEFAULT_MAX_EVENTS);
    assert_true(ev.truncated);
    assert_string_equal(ev.items[999].provider_id, "wamid.00999");
    wc_webhook_events_free(&ev);

    assert_int_equal(
        wc_webhook_parse(WC_WEBHOOK_CLOUDAPI, body, len, 1u << 20, 5, &ev, err, sizeof err), 0);
    assert_int_equal(ev.count, 5);
    assert_true(ev.truncated);
    wc_webhook_events_free(&ev);

    assert_int_equal(
        wc_webhook_parse(WC_WEBHOOK_CLOUDAPI, body, len, 1u << 20, 2500, &ev, err, sizeof err), 0);
    assert_int_equal(ev.count, 2500);
    assert_false(ev.truncated);
    wc_webhook_events_free(&ev);
    free(body);

    /* gowa's ids[] is capped the same way. */
    size_t cap = 128 + 3000 * 16;
    char *ack = malloc(cap);
    assert_non_null(ack);
    size_t n = (size_t)snprintf(ack, cap, "{\"event\":\"message.ack\",\"payload\":{\"ids\":[");
    for (int i = 0; i < 3000; i++)
        n += (size_t)snprintf(ack + n, cap - n, "%s\"3EB0%05d\"", i ? "," : "", i);
    snprintf(ack + n, cap - n, "],\"receipt_type\":\"read\"}}");
    assert_int_equal(
        wc_webhook_parse(WC_WEBHOOK_GOWA, ack, strlen(ack), 0, 0, &ev, err, sizeof err), 0);
    assert_int_equal(ev.count, 1000);
    assert_true(ev.truncated);
    wc_webhook_events_free(&ev);
    free(ack);
}

/* Random byte flips, insertions and cuts of valid bodies: never a crash or a
 * leak (the ASan build checks), and what is accepted is well formed. */
static void test_mutations(void **state)
{
    const char *seeds[] = {
        META_DELIVERED,
        META_ENVELOPE("\"statuses\":[{\"id\":\"wamid.B\",\"status\":\"failed\",\"timestamp\":"
                      "\"1763700200\",\"errors\":[{\"code\":131026,\"title\":\"t\",\"error_data\":"
                      "{\"details\":\"d\"}}]}],\"contacts\":[{\"wa_id\":\"6\",\"profile\":{"
                      "\"name\":\"n\"}}],\"messages\":[{\"from\":\"6\",\"id\":\"w\",\"type\":"
                      "\"text\",\"text\":{\"body\":\"STOP\"}}]"),
        "{\"event\":\"message.ack\",\"device_id\":\"d\",\"timestamp\":\"2025-07-18T22:44:20Z\","
        "\"payload\":{\"ids\":[\"3EB0A\",\"3EB0B\"],\"from\":\"6:1@s.whatsapp.net\","
        "\"receipt_type\":\"delivered\"}}",
        "{\"event\":\"message\",\"device_id\":\"d\",\"payload\":{\"id\":\"3EB0C\",\"from\":"
        "\"6@s.whatsapp.net\",\"timestamp\":\"2023-10-15T10:30:00+07:00\",\"body\":\"stop\"}}",
    };
    const char alphabet[] = "{}[]\":,0123456789abcdefnulltrue \\";
    uint32_t rng = 12345;
    char buf[2048];
    size_t accepted = 0;

    for (int iter = 0; iter < 4000; iter++) {
        const char *seed = seeds[iter % 4];
        size_t len = strlen(seed);
        memcpy(buf, seed, len);
        int edits = 1 + (int)((rng = rng * 1103515245u + 12345u) >> 16) % 4;
        for (int e = 0; e < edits; e++) {
            rng = rng * 1103515245u + 12345u;
            size_t at = (rng >> 8) % len;
            rng = rng * 1103515245u + 12345u;
            switch ((rng >> 16) % 3) {
            case 0: /* replace */
                buf[at] = alphabet[(rng >> 4) % (sizeof alphabet - 1)];
                break;
            case 1: /* insert */
                if (len + 1 < sizeof buf) {
                    memmove(buf + at + 1, buf + at, len - at);
                    buf[at] = alphabet[(rng >> 4) % (sizeof alphabet - 1)];
                    len++;
                }
                break;
            default: /* delete */
                memmove(buf + at, buf + at + 1, len - at - 1);
                len--;
                break;
            }
        }
        wc_webhook_events ev;
        char err[256];
        int rc = wc_webhook_parse(WC_WEBHOOK_AUTO, buf, len, 0, 0, &ev, err, sizeof err);
        assert_true(rc == 0 || rc == -1);
        if (rc == 0) {
            accepted++;
            for (size_t i = 0; i < ev.count; i++) {
                assert_non_null(ev.items[i].provider_id);
                assert_non_null(ev.items[i].provider);
                assert_true(ev.items[i].kind == WC_WEBHOOK_STATUS ||
                            ev.items[i].kind == WC_WEBHOOK_INBOUND);
            }
            wc_webhook_events_free(&ev);
        } else {
            assert_true(err[0] != '\0');
            assert_int_equal(ev.count, 0);
        }
    }
    /* Some mutations (inside string values) keep the body valid. */
    assert_true(accepted > 0);
}

/* --- opt-out ------------------------------------------------------------ */

static void test_opt_out_default_words(void **state)
{
    const char *yes[] = {
        "STOP",
        "stop",
        "  Stop  ",
        "Stop!",
        "\"stop.\"",
        "STOP ALL",
        "stop   all",
        "Stop\tAll!!",
        "unsubscribe",
        "Berhenti",
        "berhenti.",
        "CANCEL",
        "opt out",
        "Opt-Out",
        "opt_out",
        "OPTOUT",
        "optout!",
        "batal",
        "\nSTOP\r\n",
        "\xc2\xa0STOP\xc2\xa0",
        "\xe2\x80\x8bstop\xe2\x80\x8b",
        "\xef\xbb\xbfSTOP",
        "(stop)",
        "stop \xe3\x80\x80",
    };
    const char *no[] = {
        "",
        "   ",
        "!!!",
        "please stop",
        "stop it",
        "stopp",
        "s t o p",
        "STOPALL",
        "cancel it",
        "opt",
        "I said STOP",
        "sto",
        "\xe2\x9c\x8b stop", /* an emoji is not punctuation */
    };
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        if (!wc_webhook_is_opt_out(yes[i], NULL))
            fail_msg("\"%s\" should be an opt-out", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        if (wc_webhook_is_opt_out(no[i], NULL))
            fail_msg("\"%s\" should not be an opt-out", no[i]);
    assert_false(wc_webhook_is_opt_out(NULL, NULL));
    assert_true(wc_webhook_is_opt_out("stop", ""));
}

static void test_opt_out_custom_words(void **state)
{
    const char *words = " Halt , QUIT,,  no more  ,opt-out";
    assert_true(wc_webhook_is_opt_out("halt", words));
    assert_true(wc_webhook_is_opt_out("Quit.", words));
    assert_true(wc_webhook_is_opt_out("NO MORE", words));
    assert_true(wc_webhook_is_opt_out("no-more", words));
    assert_true(wc_webhook_is_opt_out("OPT OUT", words));
    assert_false(wc_webhook_is_opt_out("stop", words));
    assert_false(wc_webhook_is_opt_out("", words));

    /* Over-long words and texts never match (and never overflow). */
    char longword[400];
    memset(longword, 'A', sizeof longword - 1);
    longword[sizeof longword - 1] = '\0';
    assert_false(wc_webhook_is_opt_out(longword, longword));
    char text[5000];
    memset(text, ' ', sizeof text - 1);
    memcpy(text + 2000, "STOP", 4);
    text[sizeof text - 1] = '\0';
    assert_false(wc_webhook_is_opt_out(text, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verify_known_vectors),
        cmocka_unit_test(test_verify_rejects),
        cmocka_unit_test(test_sign),
        cmocka_unit_test(test_meta_delivered),
        cmocka_unit_test(test_meta_read_and_failed),
        cmocka_unit_test(test_meta_inbound),
        cmocka_unit_test(test_meta_other_fields_ignored),
        cmocka_unit_test(test_gowa_ack),
        cmocka_unit_test(test_gowa_inbound),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_body_limit),
        cmocka_unit_test(test_truncated_bodies),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_huge_arrays_capped),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_opt_out_default_words),
        cmocka_unit_test(test_opt_out_custom_words),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
