package main

// RFC 8785 (JCS) for the values encoding/json decodes into (with UseNumber): nil, bool,
// json.Number, string, []any, map[string]any. Go's own encoder is not JCS: it escapes <, >, &
// and U+2028/9, sorts keys by bytes (UTF-8), and formats floats its own way.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
)

func writeJCS(buf *bytes.Buffer, value any) error {
	switch v := value.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		buf.WriteString(strconv.FormatBool(v))
	case json.Number:
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil {
			return fmt.Errorf("number %s: %w", v, err)
		}
		return writeNumber(buf, f)
	case float64:
		return writeNumber(buf, v)
	case string:
		writeString(buf, v)
	case []any:
		buf.WriteByte('[')
		for i, item := range v {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeJCS(buf, item); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		// JCS orders keys by their UTF-16 code units, not by UTF-8 bytes: the two differ for
		// characters above U+FFFF against U+E000..U+FFFF.
		slices.SortFunc(keys, func(a, b string) int {
			return slices.Compare(utf16.Encode([]rune(a)), utf16.Encode([]rune(b)))
		})
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeString(buf, k)
			buf.WriteByte(':')
			if err := writeJCS(buf, v[k]); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	default:
		return fmt.Errorf("no JSON value: %T", value)
	}
	return nil
}

// writeNumber formats like ECMAScript's Number.prototype.toString, which JCS adopts: the
// shortest digits that round-trip, plain notation for exponents in [-6, 21), else d.ddde±n.
func writeNumber(buf *bytes.Buffer, f float64) error {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return fmt.Errorf("JCS has no NaN or Infinity")
	}
	if f == 0 { // -0 too
		buf.WriteByte('0')
		return nil
	}
	if f < 0 {
		buf.WriteByte('-')
		f = -f
	}
	// 'e' with precision -1 gives the shortest round-trip digits: d.ddddde±XX.
	mantissa, exp, _ := strings.Cut(strconv.FormatFloat(f, 'e', -1, 64), "e")
	digits := strings.Replace(mantissa, ".", "", 1)
	k := len(digits)
	e, _ := strconv.Atoi(exp)
	n := e + 1 // the decimal point sits after n digits
	switch {
	case k <= n && n <= 21:
		buf.WriteString(digits + strings.Repeat("0", n-k))
	case 0 < n && n <= 21:
		buf.WriteString(digits[:n] + "." + digits[n:])
	case -6 < n && n <= 0:
		buf.WriteString("0." + strings.Repeat("0", -n) + digits)
	default:
		buf.WriteString(digits[:1])
		if k > 1 {
			buf.WriteString("." + digits[1:])
		}
		fmt.Fprintf(buf, "e%+d", n-1) // the sign is always written: 1e+21, 1e-7
	}
	return nil
}

// checkNumbers refuses an integral number from 2^53 to 1e21: written as digits in the envelope
// as sent, a Python receiver parses it as an integer and refuses it (RFC 8785 allows integers
// within ±(2^53 - 1)). Better a clear error here than a dead letter there.
func checkNumbers(value any) error {
	switch v := value.(type) {
	case json.Number:
		f, err := strconv.ParseFloat(string(v), 64)
		if a := math.Abs(f); err == nil && a == math.Trunc(a) && a > 1<<53-1 && a < 1e21 {
			return fmt.Errorf("%s is beyond ±(2^53 - 1): send it as a string", v)
		}
	case []any:
		for _, item := range v {
			if err := checkNumbers(item); err != nil {
				return err
			}
		}
	case map[string]any:
		for _, item := range v {
			if err := checkNumbers(item); err != nil {
				return err
			}
		}
	}
	return nil
}

var shortEscapes = map[rune]string{
	'"': `\"`, '\\': `\\`, '\b': `\b`, '\f': `\f`, '\n': `\n`, '\r': `\r`, '\t': `\t`,
}

// writeString escapes as JSON.stringify does: the two-character escapes, \u00xx (lowercase)
// for the other control characters, everything else (DEL, U+2028, non-ASCII) as is.
func writeString(buf *bytes.Buffer, s string) {
	buf.WriteByte('"')
	for _, r := range s {
		if escaped, ok := shortEscapes[r]; ok {
			buf.WriteString(escaped)
		} else if r < 0x20 {
			fmt.Fprintf(buf, `\u%04x`, r)
		} else {
			buf.WriteRune(r)
		}
	}
	buf.WriteByte('"')
}
