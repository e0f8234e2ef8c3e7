"""Code and law requests in the forms people type, a share of them carrying real pasted text.

The training data teaches code through HumanEval docstrings, Perl FAQ headings and "How do I ...
in X?" questions, and law through MMLU's bar-exam questions and everyday legal questions. Nobody
there asks to WRITE, FIX, EXPLAIN or CONVERT code in JavaScript, SQL, shell, Rust or a
spreadsheet, pastes a function or an error message, or asks to draft, review or explain a
contract clause, lease, NDA or will, or what a named statute says. Users do all of these, and the
model, never having seen them, called them `general`.

This module writes those forms, two sources with their own strata and held-out folds:
- ``user_code``: request forms over many languages and tools, with term and error lists written
  here; a share carries a real snippet cut from source files shipped in Debian packages
  (curl's C examples, {fmt}'s C++ headers, Go's pkg/errors, Rust's semver crate, Node's semver
  and lru-cache in JavaScript and TypeScript, bash-completion's shell functions; licences in
  docs/classifier.md), the rest short project-written snippets (SQL, spreadsheet formulas, git,
  Docker, regex, pandas, HTML/CSS, Java).
- ``user_law``: drafting, review and interpretation requests and questions about named statutes;
  a share carries a real clause, a paragraph of one of the licence texts in Debian's
  ``base-files`` (/usr/share/common-licenses: legal drafting, if about software).
Both sources also hold 15% of `general` prompts in the same request forms ("Draft an email
...", "Explain what this paragraph means: <a paragraph of prose>"), so that the verbs alone do not
point at a specialist (the code source's take the verbs of code requests, the law
source's those of drafting requests).

The rules of ``templates`` hold here too: written for each expert in general, never from an
evaluation prompt or the five prompts of tests/unit/test_classifier.py; no generated text contains
a phrase of ``templates.EXCLUDED_PHRASES`` (texts that would are skipped, and a unit test checks
the output); generation is seeded.
"""
from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from router_svc.training.templates import EXCLUDED_PHRASES

USER_CODE_SUBJECT = "user_code"
USER_LAW_SUBJECT = "user_law"
SUBJECTS = (USER_CODE_SUBJECT, USER_LAW_SUBJECT)
REQUESTS_SEED = 20261203
#: Texts per source: a few thousand at most keeps `make train-router` within its 15 minutes.
CODE_TEXTS = 1500
LAW_TEXTS = 1000
#: Share of each source labelled `general` (same request forms, no code or legal matter).
GENERAL_SHARE = 0.15
#: Share of the code (law) requests that carry a pasted snippet (clause).
CODE_SNIPPET_SHARE = 0.5
LAW_CLAUSE_SHARE = 0.35

#: Language of a source file, by its name's ending (the .h files used are {fmt}'s C++ headers).
SUFFIX_LANGUAGE = {".c": "C", ".h": "C++", ".go": "Go", ".rs": "Rust", ".js": "JavaScript",
                   ".d.ts": "TypeScript", "bash_completion": "bash"}
_FENCE = {"C": "c", "C++": "cpp", "Go": "go", "Rust": "rust", "JavaScript": "js", "TypeScript": "ts",
          "bash": "bash", "SQL": "sql", "Python": "python", "Java": "java", "HTML": "html", "CSS": "css",
          "Dockerfile": "dockerfile", "YAML": "yaml"}

_NOTICE = re.compile(r"copyright|licen[cs]e|spdx|all rights reserved|warrant", re.IGNORECASE)
_COMMENT_START = ("//", "/*", "*", "#", "*/")


def language_of(member: str) -> str:
    """The language of a source file's path (``SUFFIX_LANGUAGE``)."""
    for suffix in sorted(SUFFIX_LANGUAGE, key=len, reverse=True):
        if member.endswith(suffix):
            return SUFFIX_LANGUAGE[suffix]
    raise ValueError(f"no language known for {member!r}; known endings: {sorted(SUFFIX_LANGUAGE)}")


def code_snippets(source: str, *, min_lines: int = 4, max_lines: int = 16) -> list[str]:
    """Runs of blank-line-separated blocks of 4-16 lines that are code, not comments or notices.

    A block is dropped when most of its lines are comments or it mentions a copyright, licence or
    warranty (file headers); blocks are joined until they reach ``min_lines`` and a run never
    crosses ``max_lines``, so a snippet is what a user pastes: a function or a few statements.
    """
    blocks: list[list[str]] = [[]]
    for line in source.expandtabs(4).splitlines():
        if line.strip():
            blocks[-1].append(line.rstrip())
        elif blocks[-1]:
            blocks.append([])
    snippets: list[str] = []
    run: list[str] = []
    for block in blocks:
        comments = sum(line.lstrip().startswith(_COMMENT_START) for line in block)
        if not block or comments * 2 > len(block) or _NOTICE.search("\n".join(block)):
            run = []
            continue
        if len(block) > max_lines:
            block = block[:max_lines]
        if len(run) + len(block) > max_lines:
            run = []
        run = run + ([""] if run else []) + block
        if len(run) >= min_lines:
            snippets.append("\n".join(run))
            run = []
    return snippets


def licence_paragraphs(text: str, *, min_words: int = 25, max_words: int = 160) -> list[str]:
    """Paragraphs of a licence text long enough to be a clause (headings and short lines dropped)."""
    paragraphs = []
    for paragraph in re.split(r"\n\s*\n", text):
        words = paragraph.split()
        if min_words <= len(words) <= max_words and not paragraph.lstrip().startswith(("<", "http")):
            paragraphs.append(" ".join(words))
    return paragraphs


# ---------------------------------------------------------------------------------------------
# Code: tools with tasks people ask for, what the tool calls a unit of code, and error messages.
# ---------------------------------------------------------------------------------------------

_CODE_TOOLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # tool: (units, tasks as verb phrases)
    "JavaScript": (("function", "script", "snippet"), (
        "debounce a search box", "deep clone an object", "fetch JSON from an API and show it in a table",
        "group an array of objects by a key", "format a date as YYYY-MM-DD", "copy text to the clipboard",
        "validate a form before submit", "sort an array of objects by two fields",
        "read query string parameters from the URL", "retry a failed fetch three times")),
    "TypeScript": (("function", "type", "interface", "generic helper"), (
        "type a function that takes either a string or an array of strings",
        "make every property of an interface optional except the id",
        "write a type guard for an API response", "type a React component's props",
        "infer the return type of an async function", "narrow a union type with a discriminant field")),
    "SQL": (("query", "view", "stored procedure", "migration"), (
        "find customers who ordered in January but not in February", "rank salespeople by revenue per region",
        "compute a running total of daily sales", "pivot monthly totals into columns",
        "find rows that have no match in another table", "remove exact duplicate rows but keep one",
        "get the latest order per customer", "add an index to speed up a slow join")),
    "bash": (("script", "one-liner", "function", "alias"), (
        "rename every .jpeg file in a folder to .jpg", "find the ten largest files under my home directory",
        "back up a directory to a dated tar.gz", "loop over lines of a file and skip comments",
        "kill the process listening on a port", "check whether a command exists before running it",
        "tail a log and alert when it contains ERROR", "parse command-line flags with getopts")),
    "C": (("function", "program", "macro"), (
        "read a whole file into a malloc'd buffer", "reverse a linked list in place",
        "parse integers from a line with strtol and check for errors", "implement a ring buffer",
        "free a tree without leaking memory", "swap two values without a temporary")),
    "C++": (("class", "function", "template", "program"), (
        "read a CSV file into a vector of structs", "implement a thread-safe queue with a condition variable",
        "write a RAII wrapper for a file handle", "sort a vector of pairs by the second element",
        "overload operator<< for my class", "use std::unique_ptr in a factory function")),
    "Java": (("method", "class", "program", "Spring controller"), (
        "read a text file into a list of strings", "parse JSON with Jackson into a POJO",
        "schedule a task every five minutes", "stream a list and group it by a field",
        "write a REST endpoint that returns a list of users", "compare two objects with equals and hashCode")),
    "Go": (("function", "program", "HTTP handler", "goroutine"), (
        "run three HTTP requests concurrently and wait for all of them", "read a YAML config file into a struct",
        "write a middleware that logs every request", "cancel a long operation with a context",
        "marshal a struct to JSON with lowercase field names", "write a table-driven test")),
    "Rust": (("function", "struct", "trait", "program"), (
        "read a file line by line and count words", "share a HashMap between threads",
        "return an error from main with the question mark operator", "parse command-line arguments with clap",
        "implement Display for an enum", "iterate over a vector and modify each element")),
    "HTML and CSS": (("page", "layout", "stylesheet", "component"), (
        "center a div horizontally and vertically", "make a responsive three-column grid",
        "build a sticky navigation bar", "style a button with a hover effect",
        "make an image gallery that wraps on small screens", "hide the scrollbar but keep scrolling")),
    "React": (("component", "hook", "app"), (
        "fetch data in useEffect and show a loading spinner", "build a controlled form with validation",
        "share state between sibling components", "write a custom hook for local storage",
        "render a list with stable keys", "memoize an expensive computation")),
    "pandas": (("snippet", "script", "function"), (
        "merge two DataFrames on a date column", "fill missing values with the column mean",
        "group sales by month and sum them", "drop rows where a column is empty",
        "read an Excel sheet and write it to CSV", "pivot a long table into a wide one")),
    "regex": (("pattern", "expression"), (
        "match a UK postcode", "extract every hashtag from a tweet", "validate a strong password",
        "capture the domain of an email address", "match a time like 23:59", "strip HTML tags from a string")),
    "git": (("command", "alias", "hook"), (
        "undo my last commit but keep the changes", "squash the last four commits",
        "move a commit to another branch", "remove a file from history", "see who changed a line",
        "discard all local changes")),
    "Docker": (("Dockerfile", "compose file", "command"), (
        "containerize a Flask app", "shrink my image with a multi-stage build",
        "mount a local folder into a container", "run Postgres and my app with docker compose",
        "pass environment variables at build time", "see why my container exits immediately")),
    "Excel": (("formula", "macro", "VBA function"), (
        "look up a price from another sheet", "count cells that contain a given word",
        "sum values between two dates", "highlight duplicates in a column",
        "split a full name into first and last name", "return the last non-empty value in a row")),
    "Google Sheets": (("formula", "Apps Script function"), (
        "import a range from another spreadsheet", "send an email when a cell changes",
        "filter rows by a checkbox", "combine text from several cells with a comma",
        "count unique values in a column", "pull the current price of a stock")),
    "Python": (("function", "script", "class"), (
        "watch a folder for new files", "call a REST API with retries", "parse an XML file",
        "write a command-line tool with argparse", "profile a slow loop", "read a large CSV in chunks")),
    "PowerShell": (("script", "command"), (
        "list services that are stopped", "rename files with a date prefix", "export Active Directory users to CSV")),
    "Kubernetes": (("manifest", "command", "Helm chart"), (
        "expose a deployment on a port", "set resource limits on a pod", "roll back a deployment")),
    "PHP": (("function", "script"), (
        "upload a file safely", "connect to MySQL with PDO", "hash and verify a password")),
    "C#": (("method", "class", "LINQ query"), (
        "read appsettings.json values", "group a list with LINQ", "call an async method from Main")),
    "Kotlin": (("function", "data class"), ("parse JSON with kotlinx.serialization", "launch a coroutine")),
    "Swift": (("function", "view"), ("decode JSON with Codable", "build a list view in SwiftUI")),
}
_CODE_ERRORS: dict[str, tuple[str, ...]] = {
    "JavaScript": ("TypeError: Cannot read properties of undefined (reading 'map')",
                   "Uncaught ReferenceError: $ is not defined", "Unexpected token '<' in JSON at position 0",
                   "Uncaught (in promise) TypeError: Failed to fetch"),
    "TypeScript": ("Type 'string | undefined' is not assignable to type 'string'.",
                   "Property 'name' does not exist on type '{}'.", ("Cannot find module './utils' or its "
                   "corresponding type declarations.")),
    "SQL": ('ERROR: column "orders.total" must appear in the GROUP BY clause or be used in an aggregate function',
            "ORA-00942: table or view does not exist", ("Error 1452: Cannot add or update a child row: "
            "a foreign key constraint fails")),
    "bash": ("bad substitution", "syntax error near unexpected token `done'", "command not found",
             "[: too many arguments"),
    "C": ("Segmentation fault (core dumped)", "free(): double free detected in tcache 2",
          "warning: implicit declaration of function 'strdup'"),
    "C++": ("undefined reference to `vtable for Shape'", "error: no matching function for call to 'std::vector<int>::push_back(std::string&)'",
            "terminate called after throwing an instance of 'std::out_of_range'"),
    "Java": ('Exception in thread "main" java.lang.NullPointerException',
             "java.lang.ClassCastException: class java.lang.String cannot be cast to class java.lang.Integer",
             "error: incompatible types: possible lossy conversion from double to int"),
    "Go": ("panic: runtime error: invalid memory address or nil pointer dereference",
           "fatal error: all goroutines are asleep - deadlock!", "imported and not used: \"os\""),
    "Rust": ("error[E0382]: borrow of moved value: `v`", ("error[E0502]: cannot borrow `x` as mutable because "
             "it is also borrowed as immutable"), "thread 'main' panicked at 'called `Option::unwrap()` on a `None` value'"),
    "React": ("Too many re-renders. React limits the number of renders to prevent an infinite loop.",
              "Each child in a list should have a unique \"key\" prop.",
              "Invalid hook call. Hooks can only be called inside of the body of a function component."),
    "pandas": ("SettingWithCopyWarning: A value is trying to be set on a copy of a slice from a DataFrame",
               "KeyError: 'date'", "ValueError: cannot reindex on an axis with duplicate labels"),
    "git": ("fatal: refusing to merge unrelated histories", "error: failed to push some refs to 'origin'",
            "fatal: not a git repository (or any of the parent directories): .git"),
    "Docker": ("COPY failed: file not found in build context", "Bind for 0.0.0.0:5432 failed: port is already allocated",
               "exec /usr/local/bin/docker-entrypoint.sh: no such file or directory"),
    "Excel": ("#VALUE!", "#REF!", "#N/A from my VLOOKUP", "#SPILL!"),
    "Google Sheets": ("Formula parse error.", "Array result was not expanded because it would overwrite data",
                      "Exception: You do not have permission to call UrlFetchApp.fetch"),
    "Python": ("RecursionError: maximum recursion depth exceeded",
               "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 0",
               "AttributeError: 'NoneType' object has no attribute 'group'"),
}
#: Short project-written snippets for tools that the Debian sources do not cover.
_WRITTEN_SNIPPETS: dict[str, tuple[str, ...]] = {
    "SQL": ("SELECT customer_id, COUNT(*) FROM orders\nWHERE created_at > '2024-01-01'\nGROUP BY 1\nHAVING COUNT(*) > 3;",
            "SELECT u.name, o.total\nFROM users u LEFT JOIN orders o ON o.user_id = u.id\nWHERE o.total > 100;",
            "UPDATE products SET price = price * 1.1 WHERE category = 'books'",
            ("SELECT name FROM employees e1 WHERE salary > (SELECT AVG(salary) FROM employees e2\n"
            "WHERE e2.dept_id = e1.dept_id);"),
            ("CREATE TABLE invoices (\n  id SERIAL PRIMARY KEY,\n  customer_id INT REFERENCES customers(id),\n"
            "  amount NUMERIC(10,2) NOT NULL\n);")),
    "Excel": ("=VLOOKUP(A2,Prices!A:C,3,FALSE)", "=IFERROR(INDEX(B:B,MATCH(E2,A:A,0)),\"missing\")",
              "=SUMIFS(C:C,A:A,\">=\"&F1,A:A,\"<=\"&F2)", "=COUNTIF($A$2:$A$500,A2)>1",
              "=LEFT(A2,FIND(\" \",A2)-1)"),
    "Google Sheets": ("=QUERY(A1:D,\"select A, sum(D) where B = 'North' group by A\",1)",
                      "=ARRAYFORMULA(IF(A2:A=\"\",,B2:B*C2:C))", "=IMPORTRANGE(\"sheet-key\",\"Data!A1:C100\")",
                      "=UNIQUE(FILTER(A2:A,C2:C=TRUE))"),
    "git": ("git reset --soft HEAD~1", "git rebase -i HEAD~4", "git cherry-pick a1b2c3d",
            "git push --force-with-lease origin feature", "git stash pop\nerror: Your local changes would be overwritten"),
    "Dockerfile": (("FROM python:3.12-slim\nWORKDIR /app\nCOPY requirements.txt .\nRUN pip install -r requirements.txt\n"
                   "COPY . .\nCMD [\"gunicorn\", \"app:app\"]"),
                   ("FROM node:20 AS build\nWORKDIR /src\nCOPY . .\nRUN npm ci && npm run build\n"
                   "FROM nginx:alpine\nCOPY --from=build /src/dist /usr/share/nginx/html")),
    "regex": (r"^(\d{3})-(\d{3})-(\d{4})$", r"(?<=@)[\w.-]+", r"^(?=.*[A-Z])(?=.*\d).{8,}$", r"<[^>]+>"),
    "Python": ("df = pd.read_csv('sales.csv')\ndf['month'] = df['date'].dt.month\nprint(df.groupby('month').sum())",
               "for i in range(len(items)):\n    if items[i] == target:\n        items.remove(items[i])",
               "with open(path) as f:\n    data = json.load(f)\nreturn data['results'][0]['id']",
               "def fib(n):\n    return fib(n - 1) + fib(n - 2)"),
    "Java": (("public int sum(List<Integer> xs) {\n    int total = 0;\n    for (int i = 0; i <= xs.size(); i++) {\n"
             "        total += xs.get(i);\n    }\n    return total;\n}"),
             ("Map<String, Integer> counts = new HashMap<>();\nfor (String w : words) {\n"
             "    counts.put(w, counts.get(w) + 1);\n}")),
    "HTML": ("<div class=\"card\">\n  <img src=\"cat.png\">\n  <p class=\"title\">Hello</p>\n</div>",
             "<form action=\"/login\" method=\"post\">\n  <input name=\"user\">\n  <button>Sign in</button>\n</form>"),
    "CSS": (".container {\n  display: flex;\n  justify-content: center;\n  align-items: center;\n}",
            ".grid {\n  display: grid;\n  grid-template-columns: repeat(3, 1fr);\n  gap: 1rem;\n}"),
    "YAML": (("on: [push]\njobs:\n  test:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: actions/checkout@v4\n"
             "      - run: npm test"),),
}
_CONVERT_TARGETS = ("Python", "JavaScript", "TypeScript", "Go", "Rust", "Java", "C#", "C++", "Kotlin", "bash",
                    "PowerShell", "SQL", "pandas")
_PLAIN_CODE_FORMS = (
    "Write a {tool} {unit} to {task}.", "How do I {task} in {tool}?", "Can you show me how to {task} using {tool}?",
    "I need a {tool} {unit} that can {task}.", "What's the simplest {tool} {unit} to {task}?",
    "{tool}: how to {task}", "Is there a faster way to {task} in {tool}?",
    "I'm trying to {task} with {tool} but it doesn't work. What am I missing?",
    "Give me an example {tool} {unit} to {task}, with comments.",
    "Explain step by step how to {task} in {tool}.", "write {tool} code to {task}",
    "Convert my {tool} {unit} that can {task} to {target}.", "Rewrite this in {target}: a {tool} {unit} to {task}.",
    "What is the idiomatic way to {task} in {tool}?", "Can you help me {task} in {tool}? I'm a beginner.",
)
_ERROR_FORMS = (
    "Fix this error: {error}", "I keep getting \"{error}\" in my {tool} project. How do I fix it?",
    "Why does my {tool} code fail with {error}?", "{error}\nWhat does this mean and how do I fix it?",
    "Getting {error} after upgrading. Any idea why?", "how to fix {error}",
    "My {tool} build broke with: {error}. What should I check?",
)
_SNIPPET_FORMS = (
    "Explain what this code does:\n{code}", "What does this {lang} code do?\n{code}",
    "Can you walk me through this function line by line?\n{code}", "Add comments to this code:\n{code}",
    "Write unit tests for this:\n{code}", "Is there a bug here?\n{code}", "How can I make this faster?\n{code}",
    "Convert this {lang} to {target}:\n{code}", "Rewrite this in idiomatic {target}.\n{code}",
    "This gives the wrong result. Why?\n{code}", "Review this {lang} code and suggest improvements:\n{code}",
    "Why does this fail when the input is empty?\n{code}", "Refactor this to be more readable:\n{code}",
    "{code}\n\nwhat is wrong with this", "{code}\nCan you explain this part?",
    "I found this in our codebase. What is it for?\n{code}", "Translate this snippet to {target}:\n{code}",
    "Fix this code, it throws {error}:\n{code}", "Simplify this:\n{code}",
    "Document this {lang} function in the style of our README:\n{code}",
)

# ---------------------------------------------------------------------------------------------
# Law: documents, clauses, jurisdictions, statutes.
# ---------------------------------------------------------------------------------------------

_DOCUMENTS = (
    "non-disclosure agreement", "mutual NDA", "residential lease", "commercial lease", "sublease agreement",
    "employment contract", "independent contractor agreement", "consulting agreement", "last will and testament",
    "living will", "durable power of attorney", "terms of service", "privacy policy",
    "end-user license agreement", "software license agreement", "settlement agreement", "promissory note",
    "bill of sale", "partnership agreement", "LLC operating agreement", "shareholders' agreement",
    "non-compete agreement", "severance agreement", "prenuptial agreement", "purchase agreement for a used car",
    "service level agreement", "loan agreement", "liability waiver", "letter of intent",
    "memorandum of understanding", "copyright assignment", "trademark license agreement",
    "data processing agreement", "franchise agreement", "room rental agreement", "parenting plan",
    "freelance contract", "photography release form", "website terms and conditions",
)
_CLAUSES = (
    "indemnification", "limitation of liability", "governing law", "arbitration", "confidentiality",
    "termination", "non-solicitation", "force majeure", "assignment", "severability", "entire agreement",
    "warranty disclaimer", "intellectual property", "non-compete", "liquidated damages", "late payment",
    "automatic renewal", "choice of venue", "exclusivity", "right of first refusal", "early termination",
    "most favored nation", "change of control", "audit rights", "data protection",
)
_CONTEXTS = (
    "for my small bakery", "between two freelancers", "for a software startup", "for renting out my spare room",
    "with a new web developer", "for my photography business", "between me and my co-founder",
    "for a wedding venue", "for a mobile app", "for selling my car privately", "for a family member who lends me money",
    "for a remote employee in another state", "for my online course platform", "for a music band",
)
_JURISDICTIONS = ("California", "New York", "Texas", "England and Wales", "Ontario", "Germany", "New South Wales",
                  "Delaware", "Florida", "Scotland", "the EU", "India", "Quebec", "Ireland", "Washington State")
_STATUTES = (
    "Section 230 of the Communications Decency Act", "the Fair Labor Standards Act", "the Family and Medical Leave Act",
    "the Americans with Disabilities Act", "Title VII of the Civil Rights Act", "the Fair Housing Act", "the GDPR",
    "Article 17 of the GDPR", "the California Consumer Privacy Act", "the DMCA", "the Fair Debt Collection Practices Act",
    "the Fair Credit Reporting Act", "the UK Equality Act 2010", "the Consumer Rights Act 2015",
    "the Employment Rights Act 1996", "the Fourth Amendment", "the First Amendment", "the Fifth Amendment",
    "the Sarbanes-Oxley Act", "Article 2 of the Uniform Commercial Code", "the statute of frauds",
    "the Computer Fraud and Abuse Act", "COPPA", "the HIPAA privacy rule", "the Magnuson-Moss Warranty Act",
    "the Foreign Corrupt Practices Act", "Rule 11 of the Federal Rules of Civil Procedure", "the Lanham Act",
    "the Securities Exchange Act of 1934", "17 U.S.C. 107 on fair use", "the Data Protection Act 2018",
    "the Digital Services Act", "the Truth in Lending Act", "the Telephone Consumer Protection Act",
)
_ENTITIES = ("a small online shop", "a startup with 12 employees", "a nonprofit", "a freelance designer",
             "a mobile app that collects location data", "a restaurant", "a school district", "a clinic",
             "a gig-economy platform", "a YouTube channel", "a car dealership", "a debt collection agency")
_ISSUES = ("overtime for salaried staff", "deleting customer data on request", "user comments on my website",
           "background checks before hiring", "recording phone calls", "refunds for faulty goods",
           "marketing emails to existing customers", "reasonable accommodations at work",
           "using a short clip of a film in a review", "unpaid internships", "searches of a parked car",
           "cookie banners", "retaliation after a complaint")
_SIDES = ("tenant", "buyer", "seller", "employee", "contractor", "licensee", "client", "lender", "borrower")
_GRIEVANCES = ("never delivered the furniture I paid for", "owes me three months of invoices",
               "copied my product photos onto their site", "damaged my car and refuses to pay",
               "kept my final wages", "sold me a laptop that was not as described",
               "is using my company's name", "broke our exclusivity agreement")
_WRITTEN_CLAUSES = (
    ("The Contractor shall indemnify and hold harmless the Client from any and all claims arising out of the "
    "Contractor's performance of the Services, including reasonable attorneys' fees."),
    ("In no event shall either party be liable for any indirect, incidental or consequential damages, and each "
    "party's total liability shall not exceed the fees paid in the twelve months preceding the claim."),
    ("This Agreement shall be governed by the laws of the State of New York, and the parties submit to the "
    "exclusive jurisdiction of its courts."),
    ("Any dispute arising under this Agreement shall be resolved by binding arbitration, and the parties waive "
    "any right to a jury trial or to participate in a class action."),
    ("For a period of two years after termination, the Employee shall not solicit any customer or employee of "
    "the Company."),
    ("Neither party shall be liable for failure to perform caused by events beyond its reasonable control, "
    "including fire, flood, pandemic, war or acts of government."),
    ("This Agreement renews automatically for successive one-year terms unless either party gives written notice "
    "of non-renewal at least sixty days before the end of the current term."),
    ("The Receiving Party shall hold the Confidential Information in strict confidence and use it solely to "
    "evaluate the proposed transaction."),
    ("All work product created by the Consultant under this Agreement shall be deemed work made for hire and is "
    "hereby assigned to the Company."),
    ("If any provision of this Agreement is held invalid or unenforceable, the remaining provisions shall remain "
    "in full force and effect."),
    ("The Tenant may terminate this lease early upon sixty days' written notice and payment of two months' rent "
    "as liquidated damages."),
    "I give, devise and bequeath all the residue of my estate to my children in equal shares, per stirpes.",
)
_PLAIN_LAW_FORMS = (
    "Draft a {document} {context}.", "Can you write a {document} {context}?",
    "Review my {document} and tell me if anything important is missing.", "What should a {document} include?",
    "Write a {clause} clause for a {document}.", "Is a {clause} clause in a {document} enforceable in {jurisdiction}?",
    "Explain the {clause} clause in my {document} in plain English.",
    "Draft a demand letter to a company that {grievance}.", "Write a cease and desist letter to someone who {grievance}.",
    "My {document} has a {clause} clause. What does it mean for me as the {side}?",
    "How should I negotiate the {clause} clause in my {document} as the {side}?",
    "What does {statute} say about {issue}?", "Does {statute} apply to {entity}?",
    "Explain {statute} in plain English.", "What are the penalties for violating {statute}?",
    "How do courts in {jurisdiction} interpret {statute}?",
    "Summarize what {entity} must do under {statute}.", "Is {issue} legal in {jurisdiction}?",
    "Under {statute}, can {entity} be sued over {issue}?", "Do I need a lawyer to draft a {document} in {jurisdiction}?",
    "What makes a {document} legally binding in {jurisdiction}?", "Can I break a {document} {context}?",
    "Write a letter to my insurer appealing a denied claim under my policy's {clause} clause.",
)
_CLAUSE_FORMS = (
    "Rewrite this clause in plain English:\n{clause}", "Is this clause enforceable in {jurisdiction}?\n{clause}",
    "What does this clause mean for me as the {side}?\n\"{clause}\"", "Explain this section of a contract:\n{clause}",
    "Summarize the obligations in this clause: {clause}", "Does this clause limit my right to sue?\n{clause}",
    "Redline this clause to be more favorable to the {side}: {clause}",
    "My {document} contains this paragraph. Should I be worried?\n{clause}",
    "{clause}\n\nWhat are my rights under this?", "Is this standard language for a {document}? {clause}",
    "Can you translate this legalese into normal words? {clause}",
    "What is the legal effect of this provision?\n{clause}",
)

# ---------------------------------------------------------------------------------------------
# `general` prompts in the same request forms.
# ---------------------------------------------------------------------------------------------

_PROSE = (
    "The meeting has been moved to Thursday because half the team is travelling, so please update your calendars.",
    "We walked along the harbour at dusk, the boats knocking gently together while gulls argued over chips.",
    "Our new cafe opens next month with homemade pastries, local coffee and a reading corner for kids.",
    "I have been thinking about changing careers, but I worry that starting over at forty is too late.",
    "The festival returns this summer with three stages, food stalls from twenty countries and free entry before noon.",
    "She kept every letter her grandmother wrote, tied with a blue ribbon in a shoebox under the bed.",
    "Thank you all for coming tonight; this project would not exist without your patience and late evenings.",
    "Our team exceeded its quarterly goal, mostly thanks to the new onboarding process and fewer handoffs.",
    "The hike starts at the old mill, climbs through pine forest and ends at a lake that is freezing even in August.",
    "Please remember to bring a dish to share and a folding chair, as seating in the park is limited.",
    "He said he would call after the interview, and the silence since then has been strangely loud.",
    "Volunteers are needed on Saturday morning to sort donated books for the school library sale.",
    "The museum's new wing shows photographs of the city from the 1920s, many of them never exhibited before.",
    "I'm writing to let you know that your order is on its way and should arrive within five working days.",
    "After years of renting bikes on holiday, we finally bought a tandem and now argue about who steers.",
    "The choir is looking for tenors and basses; rehearsals are on Tuesday evenings in the church hall.",
    "Our garden club meets on the first Sunday of the month to swap seedlings, tools and advice.",
    "It rained for the whole weekend, so we played board games and baked far too many cinnamon rolls.",
    "The training session covers the new booking system, how to handle complaints and where to find the forms.",
    "My grandfather built this table in 1962, and every scratch on it comes with a story.",
    "We are proud to welcome three new members to the sales team, each bringing years of experience.",
    "The town's farmers market moves indoors for the winter but keeps the same opening hours.",
    "Dear all, the office will be closed on Monday for the bank holiday and will reopen on Tuesday at nine.",
    "The novel follows two sisters who inherit a failing vineyard and must decide whether to sell it.",
)
#: `general` requests with the verbs of the code forms (explain, fix, convert, translate, review)
_GENERAL_TEXT_FORMS = (
    "Explain what this paragraph means:\n{prose}", "Rewrite this to sound more professional:\n{prose}",
    "Fix the grammar in this: {prose}", "Summarize this in one sentence: {prose}",
    "Translate this into {language}: {prose}", "Make this more exciting for a newsletter:\n{prose}",
    "Review my paragraph and suggest improvements:\n{prose}", "Convert this into a tweet: {prose}",
    "Rewrite this paragraph in plain English for a child: {prose}", "Can you make this shorter?\n{prose}",
    "{prose}\n\nWhat is the tone of this?", "Is this paragraph clear? {prose}",
    "Proofread this for me:\n{prose}",
)
#: `general` requests with the verbs of the legal forms (draft, write, review a document)
_GENERAL_DRAFT_FORMS = (
    "Draft {doc} for {event}.", "Write {doc} for {event}.", "Review my {doc2} and tell me what is missing.",
    "What should {doc} for {event} include?", "Draft an email to {recipient} about {subject}.",
    "Write a thank-you letter to {recipient}.", "Help me write {doc} for {event}, about 200 words.",
    "Draft a polite message to {recipient} declining {event}.", "Write a short {doc2} template I can reuse.",
)
_DOCS = ("a speech", "an invitation", "an agenda", "a newsletter", "a toast", "a press release", "a poster text",
         "a welcome message", "a short bio", "a social media post", "a programme", "a checklist")
_DOCS2 = ("cover letter", "wedding speech", "newsletter", "meeting notes", "personal statement", "resume",
          "event invitation", "product description", "grant application summary", "fundraising letter")
_LANGUAGES_SPOKEN = ("Spanish", "French", "German", "Italian", "Portuguese", "Japanese")
_RECIPIENTS = ("my team", "a new client", "my neighbours", "the parents of my students", "the school board",
               "our volunteers", "my manager", "a conference organiser", "my book club", "an old friend")
_SUBJECTS = ("the office move", "a delayed shipment", "the holiday schedule", "our new logo", "a charity run",
             "the summer picnic", "a change of meeting room")
_EVENTS = ("a team offsite", "a book club meeting", "a retirement party", "a school fundraiser",
           "a neighbourhood clean-up", "a product launch", "a family reunion", "a charity gala",
           "a fiftieth birthday", "an open day at our studio", "a farewell lunch", "a community choir concert")


def _fenced(rng: random.Random, code: str, lang: str) -> str:
    if rng.random() < 0.5:
        return f"```{_FENCE.get(lang, '')}\n{code}\n```"
    return code


def _unique(rng: random.Random, count: int, make) -> list[str]:
    """``count`` distinct texts from ``make()``, skipping any that contains an excluded phrase."""
    seen: set[str] = set()
    out: list[str] = []
    attempts = 0
    while len(out) < count and attempts < count * 50:
        attempts += 1
        text = make()
        lowered = text.lower()
        if lowered in seen or any(phrase in lowered for phrase in EXCLUDED_PHRASES):
            continue
        seen.add(lowered)
        out.append(text)
    return out


def _general_requests(rng: random.Random, count: int, forms: Sequence[str]) -> list[str]:
    pick = rng.choice
    return _unique(rng, count, lambda: pick(forms).format(
        prose=pick(_PROSE), language=pick(_LANGUAGES_SPOKEN), recipient=pick(_RECIPIENTS), subject=pick(_SUBJECTS),
        event=pick(_EVENTS), doc=pick(_DOCS), doc2=pick(_DOCS2)))


def generate_code(snippets: Mapping[str, Sequence[str]], count: int = CODE_TEXTS, *,
                  seed: int = REQUESTS_SEED) -> list[tuple[str, str]]:
    """(text, label) pairs: code requests, ``CODE_SNIPPET_SHARE`` of them with a pasted snippet.

    ``snippets`` maps a language to real snippets (``code_snippets`` of the Debian sources);
    the project-written ones of ``_WRITTEN_SNIPPETS`` are added. ``GENERAL_SHARE`` of the texts
    are `general` requests in the same forms.
    """
    rng = random.Random(seed)
    pick = rng.choice
    pool = {lang: tuple(values) for lang, values in snippets.items() if values}
    for lang, values in _WRITTEN_SNIPPETS.items():
        pool[lang] = pool.get(lang, ()) + values
    languages = sorted(pool)
    tools = sorted(_CODE_TOOLS)
    n_general = round(count * GENERAL_SHARE)
    n_snippet = round((count - n_general) * CODE_SNIPPET_SHARE)

    def snippet_request() -> str:
        # Real sources are larger; choose the language first so every language gets its share.
        lang = pick(languages)
        target = pick([t for t in _CONVERT_TARGETS if t != lang])
        errors = _CODE_ERRORS.get(lang) or _CODE_ERRORS["Python"]
        return pick(_SNIPPET_FORMS).format(code=_fenced(rng, pick(pool[lang]), lang), lang=lang, target=target,
                                           error=pick(errors).split("\n")[0])

    def plain_request() -> str:
        tool = pick(tools)
        if tool in _CODE_ERRORS and rng.random() < 0.3:
            return pick(_ERROR_FORMS).format(error=pick(_CODE_ERRORS[tool]), tool=tool)
        units, tasks = _CODE_TOOLS[tool]
        return pick(_PLAIN_CODE_FORMS).format(tool=tool, unit=pick(units), task=pick(tasks),
                                              target=pick([t for t in _CONVERT_TARGETS if t != tool]))

    texts = [(t, "code") for t in _unique(rng, n_snippet, snippet_request)]
    texts += [(t, "code") for t in _unique(rng, count - n_general - n_snippet, plain_request)]
    texts += [(t, "general") for t in _general_requests(rng, n_general, _GENERAL_TEXT_FORMS)]
    return texts


def generate_law(licence_texts: Sequence[str], count: int = LAW_TEXTS, *,
                 seed: int = REQUESTS_SEED) -> list[tuple[str, str]]:
    """(text, label) pairs: legal drafting and statute requests, ``LAW_CLAUSE_SHARE`` of them
    quoting a clause (a paragraph of ``licence_texts`` or one written here), and ``GENERAL_SHARE``
    `general` requests in the same forms."""
    rng = random.Random(seed + 1)
    pick = rng.choice
    clauses = [p for text in licence_texts for p in licence_paragraphs(text)] + list(_WRITTEN_CLAUSES)
    n_general = round(count * GENERAL_SHARE)
    n_clause = round((count - n_general) * LAW_CLAUSE_SHARE)

    def fields() -> dict[str, str]:
        return {"document": pick(_DOCUMENTS), "context": pick(_CONTEXTS), "clause": pick(_CLAUSES),
                "jurisdiction": pick(_JURISDICTIONS), "statute": pick(_STATUTES), "entity": pick(_ENTITIES),
                "issue": pick(_ISSUES), "side": pick(_SIDES), "grievance": pick(_GRIEVANCES)}

    def clause_request() -> str:
        return pick(_CLAUSE_FORMS).format(**{**fields(), "clause": pick(clauses)})

    texts = [(t, "law") for t in _unique(rng, n_clause, clause_request)]
    texts += [(t, "law") for t in _unique(rng, count - n_general - n_clause,
                                          lambda: pick(_PLAIN_LAW_FORMS).format(**fields()))]
    texts += [(t, "general") for t in _general_requests(rng, n_general, _GENERAL_DRAFT_FORMS)]
    return texts


#: Code tasks that mention a licence (label `code`) and licence questions that are legal ones
#: (label `law`), to measure whether the pasted licence clauses pull code prompts towards law.
#: Written for this measurement only; no training text is drawn from them.
LICENCE_PROBES: tuple[tuple[str, str], ...] = (
    ("How do I add an SPDX license identifier to every source file in my repo with a script?", "code"),
    ("Write a pre-commit hook that fails if a file lacks the Apache 2.0 header.", "code"),
    ("How do I set the license field in package.json?", "code"),
    ("In setup.py, how do I add the MIT license classifier?", "code"),
    ("Add a GPL-3 header comment to this C file: int main(void) { return 0; }", "code"),
    ("How do I declare a dual MIT/Apache-2.0 license in Cargo.toml?", "code"),
    ("Write a Python script that lists files missing a copyright header.", "code"),
    ("How do I make GitHub detect the license of my repository?", "code"),
    ("Generate a LICENSE file for my npm package from the command line.", "code"),
    ("My license-checker CI step fails on a transitive dependency. How do I allow it in the config?", "code"),
    ("Write a bash loop that prepends the BSD license text to every .h file.", "code"),
    ("How do I read the license metadata of installed Python packages with importlib.metadata?", "code"),
    ("Can I use GPL code in a closed-source commercial product?", "law"),
    ("Does the Apache License require me to disclose changes I make to the source?", "law"),
    ("If I sell software that links an LGPL library, what must I give my customers?", "law"),
    ("Is a software license agreement enforceable if the user only clicked accept?", "law"),
    ("What are my obligations under the MPL if I modify one file and distribute the binary?", "law"),
    ("Can a company relicense contributions without the contributors' consent?", "law"),
)


def probe_routing(artifact_dirs: Sequence[Path]) -> list[str]:
    """Per artifact, how many ``LICENCE_PROBES`` of each label it routes right (and the misses)."""
    from router_svc.classifier import Classifier

    lines = []
    texts = [text for text, _ in LICENCE_PROBES]
    for directory in artifact_dirs:
        classifier = Classifier.load(directory)
        predicted = [classifier.labels[i] for i in classifier.predict_batch(texts).argmax(axis=1)]
        for label in ("code", "law"):
            rows = [(t, p) for (t, want), p in zip(LICENCE_PROBES, predicted) if want == label]
            right = sum(p == label for _, p in rows)
            lines.append(f"{directory}: {label} {right}/{len(rows)}; missed: "
                         + "; ".join(f"{t!r} -> {p}" for t, p in rows if p != label))
    return lines


if __name__ == "__main__":
    # python -m router_svc.training.user_requests ARTIFACT_DIR [ARTIFACT_DIR ...]
    import sys

    print("\n".join(probe_routing([Path(arg) for arg in sys.argv[1:]])))
