"""Go sources shared by both miniature Ollama trees: the HTTP API, model store, GGUF reader.

Written for the sample world; the package layout and API follow Ollama's (module
github.com/ollama/ollama, version/, envconfig/, server/, fs/ggml/, llm/).
"""

from __future__ import annotations

from . import goproxy

GO_MOD = """module github.com/ollama/ollama

go 1.26.0

""" + goproxy.require_line()

VERSION_GO = """package version

// Version is stamped at build time with
// -ldflags "-X=github.com/ollama/ollama/version.Version=<version>".
var Version string = "0.0.0"
"""

MAIN_GO = """package main

import (
	"fmt"
	"os"

	"example.com/turbo-sample/units"
	"github.com/ollama/ollama/server"
	"github.com/ollama/ollama/version"
)

// The sample trees, like real Ollama, need a third-party module from a Go module proxy.
var _ = units.Bytes

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ollama serve | ollama --version")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		if err := server.Serve(); err != nil {
			fmt.Fprintln(os.Stderr, "Error:", err)
			os.Exit(1)
		}
	case "-v", "--version", "version":
		fmt.Printf("ollama version is %s\\n", version.Version)
	default:
		fmt.Fprintf(os.Stderr, "Error: unknown command %q for \\"ollama\\"\\n", os.Args[1])
		os.Exit(2)
	}
}
"""

ENVCONFIG_GO = """package envconfig

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Host is where the server listens (OLLAMA_HOST, default 127.0.0.1:11434).
func Host() string {
	h := strings.TrimSpace(os.Getenv("OLLAMA_HOST"))
	h = strings.TrimPrefix(strings.TrimPrefix(h, "http://"), "https://")
	if h == "" {
		return "127.0.0.1:11434"
	}
	if !strings.Contains(h, ":") {
		return h + ":11434"
	}
	return h
}

// Models is the model store (OLLAMA_MODELS, default ~/.ollama/models).
func Models() string {
	if s := os.Getenv("OLLAMA_MODELS"); s != "" {
		return s
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".ollama", "models")
}

// KvCacheType is OLLAMA_KV_CACHE_TYPE, lower-cased.
func KvCacheType() string {
	return strings.ToLower(strings.TrimSpace(os.Getenv("OLLAMA_KV_CACHE_TYPE")))
}

// FlashAttention is OLLAMA_FLASH_ATTENTION.
func FlashAttention() bool {
	b, _ := strconv.ParseBool(os.Getenv("OLLAMA_FLASH_ATTENTION"))
	return b
}

// ContextLength is OLLAMA_CONTEXT_LENGTH (default 4096).
func ContextLength() int {
	if n, err := strconv.Atoi(os.Getenv("OLLAMA_CONTEXT_LENGTH")); err == nil && n > 0 {
		return n
	}
	return 4096
}

// NumParallel is OLLAMA_NUM_PARALLEL (default 1).
func NumParallel() int {
	if n, err := strconv.Atoi(os.Getenv("OLLAMA_NUM_PARALLEL")); err == nil && n > 0 {
		return n
	}
	return 1
}
"""

GGUF_GO = """package ggml

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// GGML is the metadata of a GGUF model file.
type GGML struct {
	KV       map[string]any
	Tensors  uint64
	FileSize int64
}

func (g *GGML) Architecture() string {
	s, _ := g.KV["general.architecture"].(string)
	return s
}

func (g *GGML) Uint(key string) uint64 {
	switch v := g.KV[g.Architecture()+"."+key].(type) {
	case uint8:
		return uint64(v)
	case uint16:
		return uint64(v)
	case uint32:
		return uint64(v)
	case uint64:
		return v
	case int32:
		return uint64(v)
	case int64:
		return uint64(v)
	}
	return 0
}

func (g *GGML) BlockCount() uint64 { return g.Uint("block_count") }

func (g *GGML) HeadCountKV() uint64 {
	if n := g.Uint("attention.head_count_kv"); n > 0 {
		return n
	}
	return g.Uint("attention.head_count")
}

func (g *GGML) EmbeddingHeadCount() uint64 {
	if h := g.Uint("attention.head_count"); h > 0 {
		return g.Uint("embedding_length") / h
	}
	return 0
}

// Decode reads the GGUF header and metadata of path.
func Decode(path string) (*GGML, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || string(magic[:]) != "GGUF" {
		return nil, errors.New("not a GGUF file")
	}
	var version uint32
	var nTensors, nKV uint64
	for _, p := range []any{&version, &nTensors, &nKV} {
		if err := binary.Read(f, binary.LittleEndian, p); err != nil {
			return nil, fmt.Errorf("truncated GGUF header: %w", err)
		}
	}
	g := &GGML{KV: map[string]any{}, Tensors: nTensors, FileSize: st.Size()}
	for i := uint64(0); i < nKV; i++ {
		key, err := readString(f)
		if err != nil {
			return nil, fmt.Errorf("truncated GGUF metadata: %w", err)
		}
		var t uint32
		if err := binary.Read(f, binary.LittleEndian, &t); err != nil {
			return nil, err
		}
		v, err := readValue(f, t)
		if err != nil {
			return nil, fmt.Errorf("GGUF key %s: %w", key, err)
		}
		g.KV[key] = v
	}
	return g, nil
}

func readString(r io.Reader) (string, error) {
	var n uint64
	if err := binary.Read(r, binary.LittleEndian, &n); err != nil {
		return "", err
	}
	if n > 1<<24 {
		return "", errors.New("string too long")
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return string(b), err
}

func readValue(r io.Reader, t uint32) (any, error) {
	var err error
	switch t {
	case 0:
		var v uint8
		err = binary.Read(r, binary.LittleEndian, &v)
		return v, err
	case 1:
		var v int8
		err = binary.Read(r, binary.LittleEndian, &v)
		return v, err
	case 2:
		var v uint16
		err = binary.Read(r, binary.LittleEndian, &v)
		return v, err
	case 3:
		var v int16
		err = binary.Read(r, binary.LittleEndian, &v)
		return v, err
	case 4:
		var v uint32
		err = binary.Read(r, binary.LittleEndian, &v)
		return v, err
	case 5:
		var v int32
		err = binary.Read(r, binary.LittleEndian, &v)
		return v, err
	case 6:
		var v float32
		err = binary.Read(r, binary.LittleEndian, &v)
		return v, err
	case 7:
		var v bool
		err = binary.Read(r, binary.LittleEndian, &v)
		return v, err
	case 8:
		return readString(r)
	case 9:
		var et uint32
		var n uint64
		if err := binary.Read(r, binary.LittleEndian, &et); err != nil {
			return nil, err
		}
		if err := binary.Read(r, binary.LittleEndian, &n); err != nil {
			return nil, err
		}
		out := make([]any, 0, min(n, 1024))
		for i := uint64(0); i < n; i++ {
			v, err := readValue(r, et)
			if err != nil {
				return nil, err
			}
			if i < 1024 {
				out = append(out, v)
			}
		}
		return out, nil
	case 10:
		var v uint64
		err = binary.Read(r, binary.LittleEndian, &v)
		return v, err
	case 11:
		var v int64
		err = binary.Read(r, binary.LittleEndian, &v)
		return v, err
	case 12:
		var v float64
		err = binary.Read(r, binary.LittleEndian, &v)
		return v, err
	}
	return nil, fmt.Errorf("unknown GGUF value type %d", t)
}
"""

STORE_GO = """package server

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/ollama/ollama/envconfig"
)

const (
	mediaModel    = "application/vnd.ollama.image.model"
	mediaParams   = "application/vnd.ollama.image.params"
	mediaTemplate = "application/vnd.ollama.image.template"
	mediaSystem   = "application/vnd.ollama.image.system"
	mediaConfig   = "application/vnd.docker.container.image.v1+json"
	registry      = "registry.ollama.ai"
)

type Layer struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

type Manifest struct {
	SchemaVersion int     `json:"schemaVersion"`
	MediaType     string  `json:"mediaType"`
	Config        Layer   `json:"config"`
	Layers        []Layer `json:"layers"`
}

// Name is a model name split into namespace, model and tag (library/name:latest).
type Name struct{ Namespace, Model, Tag string }

func ParseName(s string) (Name, error) {
	n := Name{Namespace: "library", Tag: "latest"}
	if i := strings.LastIndex(s, ":"); i >= 0 {
		n.Tag = s[i+1:]
		s = s[:i]
	}
	if i := strings.LastIndex(s, "/"); i >= 0 {
		n.Namespace = s[:i]
		s = s[i+1:]
	}
	n.Model = s
	if n.Model == "" || n.Tag == "" || strings.ContainsAny(n.Model+n.Tag, " \\\\") || strings.Contains(n.Namespace, "..") {
		return n, fmt.Errorf("invalid model name %q", s)
	}
	return n, nil
}

func (n Name) String() string {
	if n.Namespace == "library" {
		return n.Model + ":" + n.Tag
	}
	return n.Namespace + "/" + n.Model + ":" + n.Tag
}

func manifestPath(n Name) string {
	return filepath.Join(envconfig.Models(), "manifests", registry, n.Namespace, n.Model, n.Tag)
}

func blobPath(digest string) (string, error) {
	hexpart, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(hexpart) != 64 {
		return "", fmt.Errorf("invalid digest %q", digest)
	}
	return filepath.Join(envconfig.Models(), "blobs", "sha256-"+hexpart), nil
}

func readManifest(n Name) (*Manifest, error) {
	b, err := os.ReadFile(manifestPath(n))
	if err != nil {
		return nil, err
	}
	var m Manifest
	return &m, json.Unmarshal(b, &m)
}

func writeManifest(n Name, m *Manifest) error {
	p := manifestPath(n)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// writeBlob stores data and returns its layer.
func writeBlob(mediaType string, r io.Reader) (Layer, error) {
	dir := filepath.Join(envconfig.Models(), "blobs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Layer{}, err
	}
	f, err := os.CreateTemp(dir, "tmp-")
	if err != nil {
		return Layer{}, err
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	f.Close()
	if err != nil {
		return Layer{}, err
	}
	digest := "sha256:" + hex.EncodeToString(h.Sum(nil))
	p, _ := blobPath(digest)
	if err := os.Rename(f.Name(), p); err != nil {
		return Layer{}, err
	}
	return Layer{MediaType: mediaType, Digest: digest, Size: n}, nil
}

func readBlob(digest string) ([]byte, error) {
	p, err := blobPath(digest)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(p)
}

// Model is a resolved model: its GGUF path and the parameters, template and system prompt.
type Model struct {
	Name       Name
	Digest     string
	ModelPath  string
	Size       int64
	Params     map[string]any
	Template   string
	System     string
	Config     map[string]any
	ModifiedAt time.Time
}

func GetModel(s string) (*Model, error) {
	n, err := ParseName(s)
	if err != nil {
		return nil, err
	}
	mf, err := readManifest(n)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("model '%s' not found", s)
		}
		return nil, err
	}
	st, _ := os.Stat(manifestPath(n))
	b, _ := json.Marshal(mf)
	sum := sha256.Sum256(b)
	m := &Model{Name: n, Digest: hex.EncodeToString(sum[:]), Params: map[string]any{}, Config: map[string]any{}}
	if st != nil {
		m.ModifiedAt = st.ModTime()
	}
	if cb, err := readBlob(mf.Config.Digest); err == nil {
		_ = json.Unmarshal(cb, &m.Config)
	}
	for _, l := range mf.Layers {
		m.Size += l.Size
		switch l.MediaType {
		case mediaModel:
			m.ModelPath, _ = blobPath(l.Digest)
		case mediaParams:
			b, err := readBlob(l.Digest)
			if err == nil {
				_ = json.Unmarshal(b, &m.Params)
			}
		case mediaTemplate:
			b, _ := readBlob(l.Digest)
			m.Template = string(b)
		case mediaSystem:
			b, _ := readBlob(l.Digest)
			m.System = string(b)
		}
	}
	if m.ModelPath == "" {
		return nil, fmt.Errorf("model '%s' has no model layer", s)
	}
	return m, nil
}

func listModels() ([]*Model, error) {
	root := filepath.Join(envconfig.Models(), "manifests", registry)
	var out []*Model
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return filepath.SkipDir
			}
			return err
		}
		if d.IsDir() || strings.HasSuffix(p, ".tmp") {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		parts := strings.Split(rel, string(filepath.Separator))
		if len(parts) != 3 {
			return nil
		}
		n := Name{Namespace: parts[0], Model: parts[1], Tag: parts[2]}
		if m, err := GetModel(n.String()); err == nil {
			out = append(out, m)
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name.String() < out[j].Name.String() })
	return out, err
}
"""
