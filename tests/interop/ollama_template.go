// Renders an Ollama Modelfile TEMPLATE with Go's text/template (the engine Ollama uses) the way
// Ollama fills it for a chat: `.System` is the system messages joined by blank lines, `.Messages`
// every message (role + content), `.Prompt`/`.Response` empty. For tests/interop-gguf.test.ts.
//
// stdin: JSON {"template": string, "conversations": [[{"role", "content"}]]}
// stdout: JSON [rendered string per conversation]
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Request struct {
	Template      string      `json:"template"`
	Conversations [][]Message `json:"conversations"`
}

func main() {
	var req Request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		panic(err)
	}
	tmpl, err := template.New("modelfile").Parse(req.Template)
	if err != nil {
		panic(err)
	}
	out := []string{}
	for _, conv := range req.Conversations {
		var system []string
		for _, m := range conv {
			if m.Role == "system" {
				system = append(system, m.Content)
			}
		}
		var b strings.Builder
		data := map[string]any{"System": strings.Join(system, "\n\n"), "Messages": conv, "Prompt": "", "Response": "", "Tools": nil}
		if err := tmpl.Execute(&b, data); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
