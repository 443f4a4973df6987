/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * persist_state_parse(): a record as vfiomigd writes it (simulated and kernel devices, a sim and
 * a kernel address space, the kernel objects) passes; the same record with any one value
 * replaced by one of another JSON type is refused, naming that field, and so are values out of
 * range, arrays past their caps, deep nesting, too many values and text that is not one JSON
 * object. Nothing here may abort: json-c asserts on a wrong type, which is what this guards.
 */

#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "persist-state.h"

/* Version 2: one fd store entry per open file description, with the objects using it (fd-4 is
 * one memfd behind a mapping and a simulated device). */
#define FDS                                                                                                  \
        "\"fds\":[{\"name\":\"fd-1\",\"users\":[\"k-iommufd\"]},{\"name\":\"fd-2\",\"users\":[\"k-container-1\"]}," \
        "{\"name\":\"fd-3\",\"users\":[\"k-group-12\"]},{\"name\":\"fd-4\",\"users\":[\"map-s0-1\",\"sim-device-gpu\"]}," \
        "{\"name\":\"fd-5\",\"users\":[\"k-device-0000_3b_00_1\"]}],"
#define BODY                                                                                                  \
        "\"next-space\":3,"                                                                                   \
        "\"kernel\":{\"iommufd\":\"k-iommufd\",\"next-container-id\":2,\"containers\":[" \
        "{\"id\":1,\"fd\":\"k-container-1\",\"iommu-set\":true,\"update-vaddr\":true," \
        "\"groups\":[{\"number\":12,\"fd\":\"k-group-12\",\"mdev\":false}]}]}," \
        "\"spaces\":[" \
        "{\"id\":\"s0\",\"backend\":\"sim\",\"prepared\":false,\"next-serial\":2,\"sim-mapping\":\"by-file\"," \
        "\"mappings\":[{\"iova\":1073741824,\"length\":1048576,\"offset\":0,\"access\":3,\"by-file\":true," \
        "\"serial\":1}]}," \
        "{\"id\":\"s1\",\"backend\":\"legacy\",\"prepared\":true,\"next-serial\":0," \
        "\"kernel\":{\"backend\":\"legacy\",\"container\":1},\"mappings\":[]}]," \
        "\"devices\":[" \
        "{\"id\":\"sim_gpu\",\"address\":\"sim:gpu\",\"backend\":\"sim\",\"space\":\"s0\"," \
        "\"last-transition\":\"running -> stop: ok\",\"clients\":[\":1.42\"]," \
        "\"sim\":{\"state-size\":1048576,\"precopy-size\":262144,\"dirty-rate\":0,\"flags\":7," \
        "\"mtty-quirks\":false,\"fail-to-error\":0,\"fail-in-place\":0,\"seed\":18446744073709551615," \
        "\"state\":\"running\",\"gens\":[[3,1],[15,4294967295]]}}," \
        "{\"id\":\"pci_0000_3b_00_1\",\"address\":\"0000:3b:00.1\",\"backend\":\"legacy\",\"space\":\"s1\"," \
        "\"clients\":[],\"kernel\":{\"name\":\"0000:3b:00.1\",\"address\":\"0000:3b:00.1\"," \
        "\"driver\":\"vfio-pci\",\"sysfs-path\":null,\"fd\":\"k-device-0000_3b_00_1\",\"path\":\"legacy\"," \
        "\"iommu-group\":12,\"mdev\":false,\"devid\":0,\"ioas-id\":null,\"hwpt-id\":null}}]}"

static const char good[] = "{\"version\":2," FDS BODY;
/* What vfiomigd wrote before version 2 (every object's descriptor under its own name): still read. */
static const char good_v1[] = "{\"version\":1," BODY;

static int parse_text(const char *text, ErrorMessage *err) {
        json_object *root = NULL;
        int r = persist_state_parse(text, strlen(text), &root, err);

        if (r == 0) {
                cr_assert(json_object_is_type(root, json_type_object));
                json_object_put(root);
        } else
                cr_assert_null(root);
        return r;
}

static int parse_object(json_object *o, ErrorMessage *err) {
        return parse_text(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN), err);
}

Test(persist_state, good) {
        ErrorMessage err = {};

        cr_assert_eq(parse_text(good, &err), 0, "%s", err.text);
        cr_assert_eq(parse_text(good_v1, &err), 0, "%s", err.text);
}

/* Values of every JSON type; each field gets every one whose type differs from its own. */
static json_object *value_of_type(json_type t) {
        switch (t) {
        case json_type_null:
                return NULL;
        case json_type_boolean:
                return json_object_new_boolean(true);
        case json_type_double:
                return json_object_new_double(1.5);
        case json_type_int:
                return json_object_new_int64(1);
        case json_type_object:
                return json_object_new_object();
        case json_type_array:
                return json_object_new_array();
        case json_type_string:
                return json_object_new_string("x");
        }
        return NULL;
}

/* Fields the kernel backend writes as null when they do not apply: their type, or null for the
 * others. */
static json_type nullable_type(const char *key) {
        static const char *const strings[] = { "iommufd", "sysfs-path", "fd", "mapping-style" };
        static const char *const ints[] = { "devid", "ioas-id", "hwpt-id", "by-address-mappings", "container" };

        for (size_t i = 0; i < ELEMENTSOF(strings); i++)
                if (streq(key, strings[i]))
                        return json_type_string;
        for (size_t i = 0; i < ELEMENTSOF(ints); i++)
                if (streq(key, ints[i]))
                        return json_type_int;
        return json_type_null;
}

static unsigned n_mutations;

/* Walks the tree of root; at each object member (and each array entry) swaps in every value of
 * another type, parses the whole record, and puts the original back. */
static void mutate_all(json_object *root, json_object *o) {
        if (json_object_is_type(o, json_type_object)) {
                json_object_object_foreach(o, key, value) {
                        json_type own = json_object_get_type(value);

                        json_object_get(value);
                        for (json_type t = json_type_null; t <= json_type_string; t++) {
                                ErrorMessage err = {};
                                json_type alt = nullable_type(key);

                                /* its own type, and for a nullable field null and its type */
                                if (t == own || (alt != json_type_null && (t == json_type_null || t == alt)))
                                        continue;
                                json_object_object_add(o, key, value_of_type(t));
                                cr_assert_eq(parse_object(root, &err), -EBADMSG, "\"%s\" as %s was accepted", key,
                                             json_type_to_name(t));
                                cr_assert(strstr(err.text, key), "\"%s\" as %s: the message does not name it: %s", key,
                                          json_type_to_name(t), err.text);
                                n_mutations++;
                        }
                        json_object_object_add(o, key, value);
                        mutate_all(root, value);
                }
        } else if (json_object_is_type(o, json_type_array)) {
                for (size_t i = 0; i < json_object_array_length(o); i++) {
                        json_object *value = json_object_array_get_idx(o, i);
                        json_type own = json_object_get_type(value);

                        json_object_get(value);
                        for (json_type t = json_type_null; t <= json_type_string; t++) {
                                ErrorMessage err = {};

                                if (t == own)
                                        continue;
                                json_object_array_put_idx(o, i, value_of_type(t));
                                cr_assert_eq(parse_object(root, &err), -EBADMSG, "entry %zu as %s was accepted", i,
                                             json_type_to_name(t));
                                n_mutations++;
                        }
                        json_object_array_put_idx(o, i, value);
                        mutate_all(root, value);
                }
        }
}

Test(persist_state, every_field_of_every_wrong_type) {
        json_object *root = json_tokener_parse(good);
        ErrorMessage err = {};

        cr_assert_not_null(root);
        mutate_all(root, root);
        cr_assert_gt(n_mutations, 300u, "only %u mutations", n_mutations);
        /* and the walk put everything back */
        cr_assert_eq(parse_object(root, &err), 0, "%s", err.text);
        json_object_put(root);
}

static void assert_refused_with(const char *from, const char *to, const char *fragment) {
        _cleanup_free_ char *text = NULL;
        const char *at = strstr(good, from);
        ErrorMessage err = {};

        cr_assert_not_null(at, "'%s' is not in the good record", from);
        cr_assert_geq(asprintf(&text, "%.*s%s%s", (int) (at - good), good, to, at + strlen(from)), 0);
        cr_assert_eq(parse_text(text, &err), -EBADMSG, "'%s' for '%s' was accepted", to, from);
        cr_assert(strstr(err.text, fragment), "'%s' for '%s': \"%s\" lacks \"%s\"", to, from, err.text, fragment);
}

Test(persist_state, out_of_range) {
        assert_refused_with("\"version\":2", "\"version\":3", "version is 3, this vfiomigd reads versions 1 to 2");
        assert_refused_with("\"version\":2", "\"version\":0", "version is 0, this vfiomigd reads versions 1 to 2");
        assert_refused_with("\"version\":2", "\"version\":-1", "version must be an unsigned integer, not negative");
        assert_refused_with("\"version\":2,", "", "version is missing");
        assert_refused_with("\"next-space\":3", "\"next-space\":4294967296", "next-space is 4294967296");
        assert_refused_with("\"state-size\":1048576", "\"state-size\":0", "devices[0].sim.state-size is 0");
        assert_refused_with("\"state-size\":1048576", "\"state-size\":68719476737", "devices[0].sim.state-size is");
        assert_refused_with("\"precopy-size\":262144", "\"precopy-size\":2097152", "devices[0].sim.precopy-size is");
        assert_refused_with("\"flags\":7", "\"flags\":0", "devices[0].sim: flags must contain stop-copy");
        assert_refused_with("\"flags\":7", "\"flags\":4294967296", "devices[0].sim.flags is 4294967296");
        assert_refused_with("\"state\":\"running\"", "\"state\":\"bogus\"", "devices[0].sim.state 'bogus'");
        assert_refused_with("\"state\":\"running\"", "\"state\":\"pre-copy\",\"flags\":1",
                            "devices[0].sim.state 'pre-copy'");
        assert_refused_with("[3,1]", "[16,1]", "devices[0].sim.gens[0][0] is 16, outside 0..15");
        assert_refused_with("[3,1]", "[3]", "devices[0].sim.gens[0] must be a [block, generation] pair");
        assert_refused_with("[3,1]", "[3,1,1]", "devices[0].sim.gens[0] must be a [block, generation] pair");
        assert_refused_with("4294967295]", "4294967296]", "devices[0].sim.gens[1][1] is 4294967296");
        assert_refused_with("\"address\":\"sim:gpu\"", "\"address\":\"sim:a/b\"", "devices[0].sim is a simulated");
        assert_refused_with("\"address\":\"sim:gpu\"", "\"address\":\"\"", "devices[0].address must be 1 to 256");
        assert_refused_with("\"id\":\"sim_gpu\"", "\"id\":\"../x\"", "devices[0].id '../x'");
        assert_refused_with("\"space\":\"s0\"", "\"space\":\"s 0\"", "devices[0].space 's 0'");
        assert_refused_with("[\":1.42\"]", "[\"\"]", "devices[0].clients[0] must be a bus name");
        assert_refused_with("\"backend\":\"sim\",\"space\"", "\"backend\":\"legacy\",\"space\"",
                            "devices[0].backend 'legacy' does not match its sim record");
        assert_refused_with("\"backend\":\"sim\",\"space\"", "\"backend\":\"bogus\",\"space\"",
                            "devices[0].backend 'bogus' is no device backend");
        assert_refused_with("\"id\":\"s0\",\"backend\":\"sim\"", "\"id\":\"s0\",\"backend\":\"bogus\"",
                            "spaces[0].backend 'bogus' is no IOMMU backend");
        assert_refused_with("\"sim-mapping\":\"by-file\"", "\"sim-mapping\":\"bogus\"",
                            "spaces[0].sim-mapping 'bogus'");
        assert_refused_with("\"id\":\"s1\"", "\"id\":\"s0\"", "spaces[1].id 's0' is also the id of spaces[0]");
        assert_refused_with("\"access\":3", "\"access\":0", "spaces[0].mappings[0].access is 0");
        assert_refused_with("\"access\":3", "\"access\":4", "spaces[0].mappings[0].access is 4");
        assert_refused_with("\"length\":1048576", "\"length\":0", "spaces[0].mappings[0].length is 0");
        assert_refused_with("\"iova\":1073741824", "\"iova\":18446744073709551615", "spaces[0].mappings[0] ends past");
        assert_refused_with("\"offset\":0", "\"offset\":18446744073709551615", "spaces[0].mappings[0] ends past");
        assert_refused_with("\"serial\":1}", "\"serial\":2}", "spaces[0].mappings[0].serial is 2, outside 0..1");
        assert_refused_with("\"iommu-group\":12", "\"iommu-group\":4294967296",
                            "devices[1].kernel.iommu-group is 4294967296");
        assert_refused_with("\"number\":12", "\"number\":-12", "kernel.containers[0].groups[0].number must be");
        assert_refused_with("\"mdev\":false}]", "\"mdev\":null}]", "kernel.containers[0].groups[0].mdev must be");
        assert_refused_with("\"container\":1}", "\"container\":\"1\"}", "spaces[1].kernel.container must be");
        assert_refused_with("\"kernel\":{\"backend\":\"legacy\",\"container\":1}", "\"kernel\":null",
                            "spaces[1].kernel must be an object, not null");
        assert_refused_with(",\"sim\":{", ",\"kernel\":{},\"sim\":{", "devices[0] must have exactly one");
}

/* The table of fd store entries: its shape, and every reference into it. Refused with the store
 * left alone (persist.c's refuse()), never adopted in part. */
Test(persist_state, fd_store_entries) {
        assert_refused_with(FDS, "", "fds is missing");
        assert_refused_with(FDS, "\"fds\":{},", "fds must be an array, not an object");
        assert_refused_with("\"name\":\"fd-3\"", "\"name\":\"fd-1\"", "fds: two entries are named 'fd-1'");
        assert_refused_with("\"name\":\"fd-3\"", "\"name\":\"fd:3\"", "fds[2].name must be 1 to 255 printable");
        assert_refused_with("\"name\":\"fd-3\"", "\"name\":\"state-3\"", "fds[2].name 'state-3' is the name of a state");
        assert_refused_with("\"name\":\"fd-3\",\"users\"", "\"users\"", "fds[2].name is missing");
        assert_refused_with("[\"k-group-12\"]", "[]", "fds[2].users lists no users");
        assert_refused_with("[\"k-group-12\"]", "[\"k-group-12\",\"map-s0-1\"]",
                            "fds: 'map-s0-1' is a user of two entries");
        assert_refused_with("[\"k-group-12\"]", "[\"k group\"]", "fds[2].users[0] must be 1 to 255 printable");
        /* every descriptor a record names must be a user of an entry */
        assert_refused_with("[\"k-group-12\"]", "[\"k-group-13\"]",
                            "kernel.containers[0].groups[0].fd names the descriptor 'k-group-12', which no entry");
        assert_refused_with("\"map-s0-1\",", "", "spaces[0].mappings[0] names the descriptor 'map-s0-1', which no entry");
        assert_refused_with("[\"k-iommufd\"]", "[\"k-iommufd2\"]", "kernel.iommufd names the descriptor 'k-iommufd'");
        assert_refused_with("[\"k-device-0000_3b_00_1\"]", "[\"x\"]",
                            "devices[1].kernel.fd names the descriptor 'k-device-0000_3b_00_1', which no entry");
        assert_refused_with("\"serial\":1}", "\"serial\":0}", "spaces[0].mappings[0] names the descriptor 'map-s0-0'");
}

static char *repeat(const char *head, const char *unit, size_t n, const char *tail) {
        size_t hl = strlen(head), ul = strlen(unit), tl = strlen(tail);
        char *s = malloc(hl + ul * n + tl + 1), *p;

        cr_assert_not_null(s);
        p = stpcpy(s, head);
        for (size_t i = 0; i < n; i++)
                p = stpcpy(p, unit);
        strcpy(p, tail);
        return s;
}

#define refused(text, fragment) assert_text_refused(text, strlen(text), fragment)

static void assert_text_refused(const char *text, size_t size, const char *fragment) {
        json_object *root = NULL;
        ErrorMessage err = {};

        cr_assert_eq(persist_state_parse(text, size, &root, &err), -EBADMSG, "accepted: %.60s", text);
        cr_assert_null(root);
        cr_assert(strstr(err.text, fragment), "\"%s\" lacks \"%s\"", err.text, fragment);
}

Test(persist_state, huge_deep_and_not_json) {
        _cleanup_free_ char *deep = repeat("{\"version\":1,\"next-space\":0,\"devices\":", "[", 100000, "");
        _cleanup_free_ char *values = repeat("{\"version\":1,\"next-space\":0,\"x\":[0", ",0", 5000000, "]}");
        _cleanup_free_ char *devices = NULL, *clients = NULL, *mappings = NULL, *gens = NULL;
        static const char dev[] = "{\"id\":\"sim_a\",\"address\":\"sim:a\",\"backend\":\"sim\",\"sim\":{"
                                  "\"state-size\":65536,\"precopy-size\":0,\"dirty-rate\":0,\"flags\":1,"
                                  "\"mtty-quirks\":false,\"fail-to-error\":0,\"fail-in-place\":0,\"seed\":0,"
                                  "\"state\":\"running\"}},";
        char *p;

        assert_text_refused(deep, strlen(deep), "nesting too deep");
        assert_text_refused(values, strlen(values), "more than 4194304 JSON values");

        devices = repeat("{\"version\":1,\"next-space\":0,\"devices\":[", dev, 4097, " ");
        p = strrchr(devices, ',');  /* the last ",", and the " " after it: room for "]}" */
        strcpy(p, "]}");
        assert_text_refused(devices, strlen(devices), "devices has 4097 entries, more than the 4096 allowed");
        clients = repeat("{\"version\":1,\"next-space\":0,\"devices\":[{\"id\":\"sim_a\",\"address\":\"sim:a\","
                         "\"backend\":\"sim\",\"clients\":[\":1.1\"",
                         ",\":1.1\"", 16, "]}]}");
        assert_text_refused(clients, strlen(clients), "devices[0].clients has 17 entries");
        mappings = repeat("{\"version\":1,\"next-space\":0,\"spaces\":[{\"id\":\"s0\",\"backend\":\"sim\","
                          "\"prepared\":false,\"next-serial\":1,\"sim-mapping\":\"by-file\",\"mappings\":[1",
                          ",1", 65535, "]}]}");
        assert_text_refused(mappings, strlen(mappings), "spaces[0].mappings has 65536 entries");
        gens = repeat("{\"version\":1,\"next-space\":0,\"devices\":[{\"id\":\"sim_a\",\"address\":\"sim:a\","
                      "\"backend\":\"sim\",\"sim\":{\"state-size\":65536,\"precopy-size\":0,\"dirty-rate\":0,"
                      "\"flags\":1,\"mtty-quirks\":false,\"fail-to-error\":0,\"fail-in-place\":0,\"seed\":0,"
                      "\"state\":\"running\",\"gens\":[[0,1]", ",[0,1]", 1, "]}}]}");
        assert_text_refused(gens, strlen(gens), "devices[0].sim.gens has 2 entries, more than the 1 allowed");

        refused("", "the state is not JSON");
        refused("{", "the state is not JSON");
        refused("{\"version\":1,\"next-space\":0", "the state is not JSON");
        refused("{version:1}", "the state is not JSON");
        refused("{\"version\":1} x", "the state is not JSON");
        assert_text_refused("{\"version\":1,\"next-space\":0}\0", 29, "the state contains a NUL byte");
        refused("null", "the state must be an object, not null");
        refused("1", "the state must be an object, not an integer");
        refused("[]", "the state must be an object, not an array");
        refused("{\"version\":1.0,\"next-space\":0}", "version must be an unsigned integer, not a");
        refused("{\"version\":1,\"next-space\":18446744073709551616}", "next-space");
        /* json-c takes NaN even in strict mode: as a number that is no integer */
        refused("{\"version\":1,\"next-space\":NaN}", "next-space must be an unsigned integer");
        /* only size bytes count: what follows is not read */
        {
                json_object *root = NULL;
                ErrorMessage err = {};
                cr_assert_eq(persist_state_parse("{\"version\":1,\"next-space\":0}garbage", 28, &root, &err), 0,
                             "%s", err.text);
                json_object_put(root);
        }
}
