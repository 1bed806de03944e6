// Command sign is a NewFuse signer in Go (standard library only): the reference for clients
// written in Go, and proof that the documented canonical form is enough to sign a task an agent
// accepts (README, "Signing from other languages").
//
//	sign vectors [tests/vectors/signing.json]   canonical bytes + signature per vector
//	sign task -namespace NS -fleet F -key HEX [-key-type hmac|ed25519]
//	          -task-id ID -handler NAME [-input JSON] [-sender NAME]
//
// `task` prints one signed task envelope, ready to XADD as the `envelope` field of an entry on
// the fleet's task stream. The JCS encoder is in jcs.go.
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"
)

const domain = "newfuse-sig-v1\n"

var b64 = base64.RawURLEncoding // unpadded base64url

type key struct {
	kid  string
	sign func([]byte) string
}

// newKey follows the rule that the key's type decides the algorithm: a seed is an Ed25519 key,
// other bytes an HMAC-SHA256 key. The kid is derived from the key, so it cannot name another.
func newKey(kind, hexKey string) (key, error) {
	raw, err := hex.DecodeString(hexKey)
	if err != nil {
		return key{}, fmt.Errorf("key: %w", err)
	}
	switch kind {
	case "hmac":
		sum := sha256.Sum256(append([]byte("newfuse-kid\n"), raw...))
		return key{"hs-" + b64.EncodeToString(sum[:12]), func(data []byte) string {
			mac := hmac.New(sha256.New, raw)
			mac.Write(data)
			return b64.EncodeToString(mac.Sum(nil))
		}}, nil
	case "ed25519":
		if len(raw) != ed25519.SeedSize {
			return key{}, fmt.Errorf("an Ed25519 seed is %d bytes", ed25519.SeedSize)
		}
		private := ed25519.NewKeyFromSeed(raw)
		sum := sha256.Sum256(private.Public().(ed25519.PublicKey))
		return key{"ed-" + b64.EncodeToString(sum[:12]), func(data []byte) string {
			return b64.EncodeToString(ed25519.Sign(private, data))
		}}, nil
	}
	return key{}, fmt.Errorf("unknown key type %q (hmac or ed25519)", kind)
}

// sign adds the kid, then signs every metadata field but the signature, nulls left out.
func sign(msgType string, payload any, metadata map[string]any, k key) ([]byte, map[string]any, error) {
	unsigned := map[string]any{}
	for name, value := range metadata {
		if name != "signature" && value != nil {
			unsigned[name] = value
		}
	}
	unsigned["kid"] = k.kid
	var buf bytes.Buffer
	buf.WriteString(domain)
	err := writeJCS(&buf, map[string]any{"type": msgType, "payload": payload, "metadata": unsigned})
	if err != nil {
		return nil, nil, err
	}
	signed := map[string]any{"signature": k.sign(buf.Bytes())}
	for name, value := range unsigned {
		signed[name] = value
	}
	return buf.Bytes(), map[string]any{"type": msgType, "payload": payload, "metadata": signed}, nil
}

func vectors(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var file struct {
		Keys    map[string]map[string]string `json:"keys"`
		Vectors []struct {
			Name     string         `json:"name"`
			Type     string         `json:"type"`
			Payload  any            `json:"payload"`
			Metadata map[string]any `json:"metadata"`
		} `json:"vectors"`
	}
	decoder := json.NewDecoder(bytes.NewReader(data))
	decoder.UseNumber() // numbers stay text until jcs.go formats them as JCS requires
	if err := decoder.Decode(&file); err != nil {
		return err
	}
	keys := map[string]string{"hmac": file.Keys["hmac"]["key_hex"], "ed25519": file.Keys["ed25519"]["seed_hex"]}
	for _, v := range file.Vectors {
		for _, kind := range []string{"hmac", "ed25519"} {
			k, err := newKey(kind, keys[kind])
			if err != nil {
				return err
			}
			canonical, envelope, err := sign(v.Type, v.Payload, v.Metadata, k)
			if err != nil {
				return err
			}
			line, _ := json.Marshal(map[string]string{
				"name": v.Name, "key": kind, "kid": k.kid, "canonical_hex": hex.EncodeToString(canonical),
				"signature": envelope["metadata"].(map[string]any)["signature"].(string),
			})
			fmt.Println(string(line))
		}
	}
	return nil
}

func task(args []string) error {
	flags := flag.NewFlagSet("task", flag.ContinueOnError)
	namespace, fleet := flags.String("namespace", "", "namespace"), flags.String("fleet", "", "fleet")
	hexKey, kind := flags.String("key", "", "key (hex)"), flags.String("key-type", "hmac", "hmac|ed25519")
	taskID, handler := flags.String("task-id", "", "task id"), flags.String("handler", "", "handler")
	input, sender := flags.String("input", "null", "input JSON"), flags.String("sender", "go-signer", "sender")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *namespace == "" || *fleet == "" || *hexKey == "" || *taskID == "" || *handler == "" {
		return fmt.Errorf("-namespace, -fleet, -key, -task-id and -handler are required")
	}
	decoder := json.NewDecoder(bytes.NewReader([]byte(*input)))
	decoder.UseNumber()
	var value any
	if err := decoder.Decode(&value); err != nil {
		return fmt.Errorf("-input: %w", err)
	}
	if err := checkNumbers(value); err != nil {
		return fmt.Errorf("-input: %w", err)
	}
	k, err := newKey(*kind, *hexKey)
	if err != nil {
		return err
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return err
	}
	metadata := map[string]any{
		"timestamp": time.Now().UTC().Format(time.RFC3339Nano), "sender": *sender,
		"protocol_version": "1.0", "message_id": hex.EncodeToString(id),
		"namespace": *namespace, "fleet": *fleet, "channel": "tasks",
	}
	payload := map[string]any{"task_id": *taskID, "handler": *handler, "input": value}
	_, envelope, err := sign("task", payload, metadata, k)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := writeJCS(&out, envelope); err != nil { // JCS is JSON too: the envelope as sent
		return err
	}
	fmt.Println(out.String())
	return nil
}

func main() {
	var err error
	switch {
	case len(os.Args) >= 2 && os.Args[1] == "vectors":
		path := "tests/vectors/signing.json"
		if len(os.Args) > 2 {
			path = os.Args[2]
		}
		err = vectors(path)
	case len(os.Args) >= 2 && os.Args[1] == "task":
		err = task(os.Args[2:])
	default:
		err = fmt.Errorf("usage: sign vectors [FILE] | sign task -namespace NS -fleet F -key HEX ...")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
