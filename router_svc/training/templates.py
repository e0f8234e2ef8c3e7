"""Project-written everyday questions per expert: the forms people use, which exams do not have.

MMLU asks in exam phrasing, HumanEval in docstrings, the Perl FAQ in "How do I ...?" headings,
and chitchat is everyday talk labelled `general`. Nothing in the training data asks a medicine,
law, science or code question the way a user types one ("Is it safe to take X with Y?", "Can my
employer ...?", "How do I ... in Go?"), so the model learned that conversational form means
`general`. No package on the registries this project reads ships everyday medical or legal
questions, so this module writes them: a few dozen question forms per expert, filled from term
lists. The term lists are written here, except the medical conditions, which also draw on the
words of Debian's ``hunspell-en-med`` medical dictionary (GPL-3+) ending in -itis, -osis, -emia,
-oma, -algia or -pathy.

Rules the forms were written under (docs/classifier.md repeats them):
- written for each expert in general, never from an evaluation prompt or one of the five prompts
  that the classifier tests check (tests/unit/test_classifier.py); so none of the phrases in
  ``EXCLUDED_PHRASES`` occurs, and a unit test holds every generated text to that;
- `general` gets the same treatment (writing, planning and advice requests), so that a
  conversational form alone does not point at a specialist either.
Generation is seeded, so ``make train-router`` stays reproducible.
"""
from __future__ import annotations

import random
import re
import sys
from collections.abc import Sequence

TEMPLATES_SUBJECT = "templates"
TEMPLATES_SEED = 20261202
#: Questions generated per expert.
PER_EXPERT = 350

#: Words of the classifier tests' five everyday prompts that are not everyday function words: no
#: generated text may contain them, so those tests measure generalisation, not recall.
EXCLUDED_PHRASES = ("ibuprofen", "side effect", "landlord", "deposit", "wear and tear", "tuple",
                    "train leaves", "mph", "catch up", "derivative", "x^3")

_CONDITIONS = (
    "diabetes", "high blood pressure", "asthma", "migraines", "eczema", "psoriasis", "arthritis",
    "gout", "anemia", "pneumonia", "bronchitis", "the flu", "shingles", "chickenpox", "measles",
    "strep throat", "a urinary tract infection", "kidney stones", "gallstones", "acid reflux",
    "irritable bowel syndrome", "celiac disease", "hypothyroidism", "depression", "anxiety",
    "insomnia", "sleep apnea", "high cholesterol", "osteoporosis", "sciatica", "tendinitis",
    "a concussion", "tinnitus", "glaucoma", "cataracts", "conjunctivitis", "an ear infection",
    "sinusitis", "tonsillitis", "lupus", "multiple sclerosis", "Parkinson's disease",
    "Alzheimer's disease", "epilepsy", "heart failure", "atrial fibrillation", "a stroke",
    "angina", "COPD", "tuberculosis", "hepatitis B", "HIV", "Lyme disease", "mononucleosis",
    "appendicitis", "a hernia", "endometriosis", "PCOS", "gestational diabetes", "preeclampsia",
    "acne", "rosacea", "hives", "a food allergy", "hay fever", "vertigo", "plantar fasciitis",
    "carpal tunnel syndrome", "a sprained ankle", "a stress fracture", "dehydration",
    "heat stroke", "frostbite", "a yeast infection", "head lice", "scabies", "ringworm",
)
_DRUGS = (
    "paracetamol", "acetaminophen", "aspirin", "naproxen", "amoxicillin", "azithromycin",
    "doxycycline", "ciprofloxacin", "metformin", "insulin", "lisinopril", "amlodipine",
    "atorvastatin", "simvastatin", "omeprazole", "pantoprazole", "loratadine", "cetirizine",
    "diphenhydramine", "prednisone", "hydrocortisone cream", "sertraline", "fluoxetine",
    "citalopram", "bupropion", "melatonin", "levothyroxine", "warfarin", "clopidogrel",
    "metoprolol", "furosemide", "gabapentin", "tramadol", "codeine", "albuterol",
    "montelukast", "the birth control pill", "a flu shot", "the MMR vaccine", "vitamin D",
    "iron supplements", "antibiotics", "antihistamines", "statins", "beta blockers",
)
_SYMPTOMS = (
    "a headache", "chest pain", "a sore throat", "a fever", "a rash", "shortness of breath",
    "back pain", "dizziness", "nausea", "a cough", "heartburn", "joint pain", "numbness in my hands",
    "blurred vision", "swollen ankles", "night sweats", "fatigue", "stomach cramps", "diarrhea",
    "constipation", "a nosebleed", "ringing in my ears", "itchy eyes", "hair loss",
    "a lump in my neck", "heart palpitations", "blood in my urine", "a stiff neck",
)
_PROCEDURES = (
    "a colonoscopy", "an MRI", "a CT scan", "knee replacement surgery", "cataract surgery",
    "a root canal", "an appendectomy", "a tonsillectomy", "LASIK", "a blood transfusion",
    "chemotherapy", "dialysis", "a vasectomy", "a C-section", "a biopsy", "physical therapy",
    "a hip replacement", "gallbladder removal", "a tooth extraction", "an epidural",
)
_PEOPLE = ("my son", "my daughter", "my mother", "my father", "my husband", "my wife", "my baby",
           "my grandmother", "my friend", "my toddler", "my teenager", "I")

_MEDICINE_FORMS = (
    "What are the symptoms of {condition}?", "How is {condition} treated?",
    "What causes {condition}?", "Can {condition} be cured?", "Is {condition} contagious?",
    "How long does {condition} usually last?", "How do doctors test for {condition}?",
    "What should I eat if I have {condition}?", "Is {condition} hereditary?",
    "What is the best treatment for {condition} in older adults?",
    "Is it safe to take {drug} with {drug2}?", "How much {drug} can an adult take in a day?",
    "What is {drug} used for?", "Can I drink alcohol while taking {drug}?",
    "Is {drug} safe during pregnancy?", "How long does it take for {drug} to work?",
    "What happens if I miss a dose of {drug}?", "Can {drug} cause weight gain?",
    "Should I take {drug} with food?", "What is the usual dose of {drug} for a child?",
    "{person} has had {symptom} for three days. Should we see a doctor?",
    "Is {symptom} a sign of {condition}?", "What could cause {symptom} and {symptom2}?",
    "Why do I get {symptom} after eating?", "How can I relieve {symptom} at home?",
    "When is {symptom} an emergency?", "What are the risks of {procedure}?",
    "How long is the recovery after {procedure}?", "How should I prepare for {procedure}?",
    "Does {procedure} hurt?", "What is {condition} and how is it diagnosed?",
    "My doctor says I have {condition}. What does that mean?",
    "Can {condition} lead to {condition2} if left untreated?",
    "What vaccines does {person} need before travelling abroad?",
    "How often should I get my blood pressure checked?",
    "Explain the difference between {condition} and {condition2}.",
    "what helps with {symptom}", "{drug} vs {drug2}, which is better for {symptom}?",
)

_PARTIES = ("employer", "boss", "neighbour", "neighbor", "ex-wife", "ex-husband", "business partner",
            "contractor", "insurance company", "school", "HOA", "bank", "roommate", "co-worker",
            "ex-partner", "homeowners association", "former employer", "mortgage lender")
_PARTY_ACTIONS = (
    "fire me for being sick", "read my private messages", "refuse to pay my overtime",
    "change my contract without asking", "sue me for this", "take me to small claims court",
    "stop me from seeing my kids", "cancel my policy without notice", "record me without consent",
    "make me sign a non-compete agreement", "withhold my final paycheck", "tow my car",
    "put a lien on my house", "deny my claim after I paid the premiums",
    "build a fence on my property", "ban me from the property", "garnish my wages",
    "enforce a verbal agreement", "charge me a penalty for ending the agreement early",
    "share my personal data with third parties",
)
_LEGAL_TASKS = (
    "file for divorce", "write a will", "set up a trust", "register a trademark", "form an LLC",
    "file a small claims case", "contest a parking ticket", "apply for a green card",
    "get a restraining order", "change my name legally", "file for bankruptcy",
    "appeal a court decision", "get power of attorney for my parent", "adopt a child",
    "evict a tenant who stopped paying", "report workplace discrimination", "file a patent",
    "get custody of my children", "expunge a criminal record", "probate an estate",
    "respond to a lawsuit", "file a copyright claim", "dispute a debt collector",
)
_LEGAL_TERMS = (
    "a misdemeanor", "a felony", "probation", "parole", "a tort", "a contract", "negligence",
    "libel", "slander", "defamation", "a power of attorney", "a living trust", "a prenuptial agreement",
    "an easement", "eminent domain", "a subpoena", "an affidavit",
    "a plea bargain", "double jeopardy", "habeas corpus", "fair use", "an NDA", "joint custody",
    "alimony", "a lien", "adverse possession", "a class action", "arbitration", "mediation",
    "a statute of limitations", "a breach of contract", "an indemnity clause", "copyright",
    "a trademark", "a patent", "due process", "probable cause", "Miranda rights",
)
_LEGAL_SITUATIONS = (
    "I was injured at work", "my car was rear-ended", "I was arrested", "I was fired without notice",
    "my flight was cancelled", "a dog bit me", "someone copied my photos", "my identity was stolen",
    "I bought a car that turned out to be a lemon", "a company used my song without permission",
    "my package was never delivered", "I got a DUI", "my business partner took the money",
    "the police searched my car", "my employer did not pay me", "I was overcharged by a contractor",
)
_PLACES = ("California", "Texas", "New York", "Florida", "the UK", "Canada", "Australia", "Germany",
           "my state", "the EU", "Ontario", "Illinois")
_LAW_FORMS = (
    "Can my {party} {party_action}?", "Is it legal for my {party} to {party_action}?",
    "How do I {legal_task}?", "Do I need a lawyer to {legal_task}?",
    "How much does it cost to {legal_task} in {place}?", "What is {legal_term}?",
    "What is the difference between {legal_term} and {legal_term2}?",
    "What are my rights if {situation}?", "Can I sue if {situation}?",
    "What should I do legally if {situation}?", "Is it illegal to record a phone call in {place}?",
    "What is the statute of limitations for {legal_term2} in {place}?",
    "Is a verbal agreement legally binding in {place}?", "Explain {legal_term} in plain English.",
    "What happens in court if {situation}?", "Can I go to jail if {situation}?",
    "How long does it take to {legal_task} in {place}?",
    "What documents do I need to {legal_task}?", "Is {legal_term} a criminal or a civil matter?",
    "Can I break a contract if {situation}?", "Who is liable if {situation}?",
    "Draft a clause for {legal_term2} in a services contract.",
    "Is it legal to drive with headphones in {place}?",
    "what are the legal consequences of {legal_term}",
)

_SCIENCE_TOPICS = (
    "photosynthesis", "gravity", "evolution", "plate tectonics", "the greenhouse effect",
    "nuclear fusion", "nuclear fission", "radioactive decay", "black holes", "the big bang",
    "quantum entanglement", "relativity", "electromagnetism", "entropy", "osmosis", "DNA replication",
    "natural selection", "the water cycle", "ocean tides", "volcanoes", "earthquakes",
    "superconductivity", "semiconductors", "chemical bonds", "oxidation", "catalysts",
    "the periodic table", "isotopes", "cell division", "mitochondria", "enzymes", "viruses",
    "bacteria", "climate change", "the ozone layer", "magnetism", "sound waves", "light refraction",
    "rainbows", "lightning", "the speed of light", "dark matter", "supernovae", "comets",
    "the northern lights", "acids and bases", "polymers", "crystals", "static electricity",
)
_SCIENCE_PAIRS = (
    ("weather", "climate"), ("mass", "weight"), ("speed", "velocity"), ("an atom", "a molecule"),
    ("mitosis", "meiosis"), ("DNA", "RNA"), ("a virus", "a bacterium"), ("heat", "temperature"),
    ("fusion", "fission"), ("an element", "a compound"), ("a star", "a planet"),
    ("AC", "DC current"), ("ionic", "covalent bonds"), ("kinetic", "potential energy"),
    ("a meteor", "a meteorite"), ("an acid", "a base"), ("genotype", "phenotype"),
)
_SCIENCE_WHY = (
    "the sky turn red at sunset", "ice float on water", "the moon have phases",
    "metal feel colder than wood", "salt melt ice on roads", "leaves change colour in autumn",
    "bread rise", "a balloon stick to the wall after rubbing it", "the ocean look blue",
    "hot air rise", "stars twinkle", "iron rust", "popcorn pop", "a compass point north",
    "water boil at a lower temperature on a mountain", "onions make you cry",
    "the earth have seasons", "soap remove grease", "a spoon look bent in a glass of water",
    "birds fly in a V formation", "cats always land on their feet", "glass break so easily",
)
_SCIENCE_FORMS = (
    "How does {topic} work?", "Explain {topic} to a ten-year-old.", "What is {topic}?",
    "Why does {why}?", "What is the difference between {a} and {b}?",
    "Can you explain {topic} in simple terms?", "What would happen to the earth without {topic}?",
    "How do scientists measure {topic}?", "What is the evidence for {topic}?",
    "Why is {topic} important for life on earth?", "How was {topic} discovered?",
    "what causes {topic}", "Is it true that {why2}?", "How fast does light travel through water?",
    "What is the chemical formula of table salt and why is it stable?",
    "How do plants know which way is up?", "Why don't we feel the earth spinning?",
    "How many protons does {element} have?", "What happens when you mix {element} with water?",
    "Is {element} a metal or a non-metal?", "Why is {element} reactive?",
)
_ELEMENTS = ("hydrogen", "helium", "lithium", "carbon", "nitrogen", "oxygen", "sodium", "magnesium",
             "aluminium", "silicon", "chlorine", "potassium", "calcium", "iron", "copper", "zinc",
             "silver", "gold", "mercury", "uranium", "neon", "sulfur", "phosphorus")

_LANGUAGES = ("Python", "JavaScript", "TypeScript", "Java", "C", "C++", "C#", "Go", "Rust", "Ruby",
              "PHP", "Kotlin", "Swift", "bash", "SQL", "R", "Scala", "Haskell", "Lua", "Perl")
_CODE_TASKS = (
    "read a CSV file", "parse JSON", "sort a dictionary by value", "reverse a string",
    "remove duplicates from an array", "make an HTTP request", "connect to a PostgreSQL database",
    "read a file line by line", "split a string on whitespace", "convert a string to a date",
    "run a shell command", "handle exceptions", "write unit tests", "create a REST API",
    "merge two sorted arrays", "check if a number is prime", "flatten a nested array",
    "count word frequencies in a text file", "generate a random password", "send an email",
    "resize an image", "download a file", "implement binary search", "implement a linked list",
    "find the largest element of an array", "format a number with commas", "create a thread pool",
    "debounce a function", "memoize a recursive function", "validate an email address with a regex",
    "serialize an object to JSON", "iterate over a map", "read environment variables",
    "paginate query results", "upload a file to S3", "hash a password", "compress a folder",
)
_CODE_ERRORS = (
    "a NullPointerException", "a segmentation fault", "TypeError: 'NoneType' object is not subscriptable",
    "IndexError: list index out of range", "a stack overflow", "an undefined reference error",
    "KeyError", "ModuleNotFoundError", "a borrow checker error", "cannot read property of undefined",
    "a merge conflict", "a deadlock", "a memory leak", "a CORS error", "an off-by-one error",
    "a race condition", "SyntaxError: unexpected EOF", "permission denied", "a 500 error from my API",
)
_CODE_CONCEPTS = (
    "recursion", "closures", "pointers", "generics", "async/await", "dependency injection",
    "a hash table", "big O notation", "garbage collection", "a REST API", "a Docker container",
    "a git rebase", "a virtual environment", "polymorphism", "inheritance", "an interface",
    "a lambda function", "a decorator", "a generator", "mutexes", "a promise", "a callback",
    "the event loop", "SQL joins", "an index in a database", "a foreign key", "unit testing",
    "a race condition", "memoization", "dynamic programming", "a binary tree", "a regex",
)
_CODE_PAIRS = (
    ("a process", "a thread"), ("the stack", "the heap"), ("a class", "an object"),
    ("a compiler", "an interpreter"), ("an abstract class", "an interface"),
    ("git merge", "git rebase"), ("SQL", "NoSQL databases"), ("== and ===", "in JavaScript"),
    ("let", "var in JavaScript"), ("a set", "a dictionary"), ("an array", "a linked list"),
    ("TCP", "UDP sockets"), ("a pointer", "a reference in C++"), ("GET", "POST requests"),
)
_CODE_THINGS = ("a to-do list app", "a login form", "a snake game", "a web scraper", "a chat bot",
                "a calculator", "a REST API for a bookstore", "a command-line tool", "a Discord bot",
                "a URL shortener", "a blog backend", "a weather dashboard", "a file uploader")
_FRAMEWORKS = ("React", "Django", "Flask", "Spring Boot", "Express", "pandas", "NumPy", "Vue",
               "Angular", "Rails", "Laravel", "FastAPI", "TensorFlow", "PyTorch", "jQuery", "Node.js")
_CODE_FORMS = (
    "How do I {task} in {lang}?", "Write a {lang} function to {task}.",
    "how to {task} in {lang}", "What's the best way to {task} with {framework}?",
    "Why am I getting {error} in my {lang} code?", "How do I fix {error}?",
    "Explain {concept} with an example in {lang}.", "What is {concept} in programming?",
    "What is the difference between {a} and {b}?", "Can you write a {lang} script that {task3}?",
    "Build {thing} in {framework}.", "Write the code for {thing} using {lang}.",
    "Refactor this {lang} code to be more readable: for i in range(len(items)): print(items[i])",
    "My {framework} app is slow. How do I profile it?", "Write a regular expression that matches {regex_target}.",
    "Write a SQL query that {sql_task}.", "How do I install {framework} on Windows?",
    "Convert this loop to a list comprehension: result = [] then for x in data: result.append(x * 2)",
    "What does the {module} module do in Python?", "Show me how to use {module} in Python.",
    "Is {lang} or {lang2} better for {thing}?", "Review my {lang} code for bugs.",
    "How do I debug {error} in {framework}?", "Add error handling to my {lang} function that {task3}.",
)
_REGEX_TARGETS = ("a US phone number", "an IPv4 address", "a hex colour code", "a date like 2024-01-31",
                  "an email address", "a URL", "a postcode", "words that start with a capital letter")
_SQL_TASKS = ("finds the top five customers by total sales", "counts orders per month",
              "joins the users and orders tables", "deletes duplicate rows",
              "returns employees who earn more than their manager", "finds the second highest salary")

_MATH_FORMS = (
    "Solve for x: {a}x + {b} = {c}.", "What is {p}% of {n}?", "Simplify ({a}x + {b})({a}x - {b}).",
    "Find the integral of {f} dx.", "Differentiate {f} with respect to x.",
    "What is the limit of (x^2 - {b2})/(x - {b}) as x approaches {b}?",
    "Factor x^2 + {s}x + {prod}.", "What is the square root of {sq}?",
    "If I invest ${n} at {p}% interest compounded yearly, how much will I have after {t} years?",
    "A recipe needs {a} cups of flour for {b} cookies. How much flour for {c} cookies?",
    ("A shop sells pens at ${a} each and notebooks at ${b} each. Sam spends ${total} on {k} items. "
     "How many pens did he buy?"),
    ("{name} is {a} years older than her brother. In {t} years their ages will add up to {c}. "
     "How old is she now?"),
    "Two pipes fill a tank in {a} and {b} hours. How long do they take together?",
    "What is the probability of rolling a sum of {dice} with two dice?",
    "How many ways can {k} people sit in a row of {k} chairs?", "What is {a} factorial?",
    "Is {n} a prime number?", "Find the area of a circle with radius {a} cm.",
    "A rectangle has a perimeter of {per} m and a length of {a} m. What is its width?",
    "Convert {n} from base 10 to binary.", "What is the sum of the first {n} positive integers?",
    "Find the slope of the line through ({a}, {b}) and ({c}, {t}).",
    "Solve the system x + y = {c}, x - y = {a}.", "What is log base 2 of {pow2}?",
    "A car travels {n} km in {t} hours. What is its average speed?",
    "How do I calculate the standard deviation of {a}, {b}, {c} and {t}?",
    "Prove that the sum of two even numbers is even.",
    "what is the GCD of {n} and {c}", "Find the median of {a}, {c}, {b}, {t}, {n}.",
    "If a shirt costs ${n} after a {p}% discount, what was the original price?",
    # Everyday word problems: rates, meeting times, work, mixtures, ages, interest, percentages,
    # unit conversion and chance, in the words people use rather than exam notation.
    ("A cyclist sets off at {hour} am riding at {v1} km/h. A friend follows on the same road an hour "
     "later at {v2} km/h. At what time does the friend reach the cyclist?"),
    ("Two towns are {dist} km apart. A bus starts from each town at the same time, one at {v1} km/h and "
     "the other at {v2} km/h. How long until they meet?"),
    "I drove {dist} km at {v1} km/h and came back at {v2} km/h. What was my average speed for the round trip?",
    "How long does it take to walk {a} km at {b} km an hour?",
    ("A boat goes {dist} km downstream in {t} hours and returns in {t2} hours. "
     "What is the speed of the current?"),
    "A plane flies {dist} miles in {t} hours against the wind. How fast is it going?",
    ("{name} can paint a fence in {a} hours and her brother takes {b} hours. "
     "If they paint it together, how long will it take?"),
    "If {k} workers build a wall in {t} days, how many days would {k2} workers need?",
    ("How many liters of a {p}% salt solution must be mixed with {a} liters of a {p2}% solution "
     "to get a {p3}% solution?"),
    "Coffee at ${a} a pound is blended with coffee at ${b} a pound to make {c} pounds at ${mid} a pound. How much of each?",
    "A father is {age1} and his son is {age2}. In how many years will the father be twice as old as his son?",
    "In {t} years {name} will be three times as old as she was {t} years ago. How old is she?",
    "If I put ${n} in a savings account at {p}% simple interest, how much interest do I earn in {t} years?",
    "How long will it take for money to double at {p}% annual interest?",
    "My loan is ${n} at {p}% a year compounded monthly. How much do I owe after {t} years?",
    "A price went up from ${a} to ${c}. By what percent did it increase?",
    "A town of {n} people grows by {p}% each year. What will the population be in {t} years?",
    "I scored {c} out of {per} on a test. What percentage is that?",
    "After a {p}% raise I earn ${n} a month. What did I earn before?",
    "How many centimeters are in {a} feet {b} inches?",
    "Convert {c} degrees Fahrenheit to Celsius.",
    "How many seconds are there in {t} days?",
    "If a car uses {a} liters of fuel per 100 km, how far can it go on {c} liters?",
    "What is the probability of drawing two aces in a row from a deck of 52 cards without replacement?",
    "If I roll three dice, what is the chance that all of them show the same number?",
    "What is the probability of getting at least one six in {k} rolls of a die?",
    "A bag has {a} red and {b} blue marbles. If I take two without looking, what is the chance both are red?",
    "If I flip a coin {k} times, what is the probability of exactly {k3} heads?",
    ("A tank holds {n} liters and leaks {a} liters an hour while a tap adds {c} liters an hour. "
     "How long until it is full, starting empty?"),
    "A clock shows {hour}:{minute}. What is the angle between the hour and minute hands?",
    "Tickets cost ${a} for adults and ${b} for children. {k} tickets cost ${total2}. How many were for children?",
    "I read {c} pages a day. How many days will a {n}-page book take me?",
)
_FUNCTIONS = ("x^2", "sin(x)", "e^(2x)", "ln(x)", "x^4 - 3x", "1/x", "cos(3x)", "x e^x", "sqrt(x)",
              "5x^2 + 2x", "tan(x)", "x^5", "3^x")
_NAMES = ("Maria", "Aisha", "Lena", "Priya", "Sofia", "Hana", "Chloe", "Nadia", "Grace", "Yuki")

_GENERAL_FORMS = (
    "Write a {genre} about {topic}.", "Give me ten ideas for {occasion}.",
    "Plan a {k}-day trip to {city}.", "Write an email to {recipient} about {subject}.",
    "Help me write a cover letter for a {job} position.", "Recommend some {media} like {title}.",
    "What should I cook for dinner tonight with {ingredient}?",
    "How can I get better at {skill}?", "Summarize the plot of {title}.",
    "Write a LinkedIn post announcing {subject}.", "Give me a catchy slogan for {business}.",
    "Translate 'good morning, how are you' into {language}.",
    "What are some tips for {skill} as a beginner?", "Write a toast for {occasion}.",
    "Create a weekly workout plan for a busy {job}.", "Brainstorm names for {business}.",
    "Write a product description for {product}.", "What is a good gift for {recipient}?",
    "Tell me a fun fact about {city}.", "Write a haiku about {topic}.",
    "How do I ask {recipient} for a raise?", "Draft a business plan outline for {business}.",
    "Rewrite this sentence to sound more professional: I can't make it to the meeting.",
    "What happened during {event}?", "Who was {person_hist} and why are they famous?",
    "hey, how's your day going?", "Can you help me plan {occasion}?",
    "Write a marketing strategy for {business}.", "Give me a reading list about {topic}.",
)
_GENRES = ("poem", "short story", "song", "limerick", "blog post", "speech", "bedtime story",
           "essay", "movie script scene")
_TOPICS = ("autumn", "friendship", "the ocean", "a lost dog", "city life", "a first date", "coffee",
           "growing up", "the mountains", "a rainy day", "leadership", "travel", "minimalism")
_OCCASIONS = ("a birthday party", "a team-building day", "a wedding", "a baby shower",
              "a family reunion", "a retirement party", "a date night", "a weekend at home")
_CITIES = ("Paris", "Tokyo", "Rome", "Lisbon", "New York", "Mexico City", "Bangkok", "Istanbul",
           "Cape Town", "Prague", "Seoul", "Buenos Aires")
_RECIPIENTS = ("my manager", "a client", "a professor", "my team",
               "a recruiter", "my coworkers", "my mom", "a new neighbour", "my boss")
_SUBJECTS = ("a delayed project", "a new product launch", "my new job", "a schedule change",
             "our quarterly results", "a team offsite", "a missed deadline")
_JOBS = ("marketing manager", "nurse", "teacher", "data analyst", "sales associate",
         "graphic designer", "project manager", "barista", "software engineer")
_MEDIA = ("books", "movies", "podcasts", "TV shows", "board games", "albums")
_TITLES = ("Pride and Prejudice", "The Great Gatsby", "Breaking Bad", "The Hobbit", "Inception",
           "Friends", "Harry Potter", "The Office", "Dune")
_INGREDIENTS = ("chicken and rice", "leftover pasta", "eggs and spinach", "tofu", "salmon",
                "chickpeas", "ground beef")
_SKILLS = ("public speaking", "writing", "time management", "negotiation", "photography",
           "drawing", "chess", "cooking", "running", "learning languages", "networking")
_BUSINESSES = ("a bakery", "a coffee shop", "a dog-walking service", "an online bookstore",
               "a yoga studio", "a food truck", "a cleaning company")
_PRODUCTS = ("a reusable water bottle", "noise-cancelling headphones", "a standing desk",
             "a scented candle", "a hiking backpack")
_LANGS = ("French", "Spanish", "Japanese", "German", "Italian", "Korean")
_EVENTS = ("the French Revolution", "the fall of the Berlin Wall", "the Renaissance",
           "the Industrial Revolution", "the Cold War", "the moon landing")
_HISTORICAL = ("Cleopatra", "Napoleon", "Genghis Khan", "Abraham Lincoln", "Joan of Arc",
               "Winston Churchill")

_MED_SUFFIX = re.compile(r"^[a-z]{6,}(itis|osis|emia|oma|algia|pathy)$")


def dictionary_conditions(dic: bytes, *, limit: int = 400, seed: int = TEMPLATES_SEED) -> list[str]:
    """Condition names from a hunspell medical dictionary: lower-case words with a disease suffix."""
    words = sorted({line.split("/")[0].strip() for line in dic.decode("utf-8", "replace").splitlines()
                    if _MED_SUFFIX.match(line.split("/")[0].strip())})
    rng = random.Random(seed)
    return sorted(rng.sample(words, min(limit, len(words))))


def generate(per_expert: int = PER_EXPERT, *, seed: int = TEMPLATES_SEED,
             extra_conditions: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``per_expert`` (text, expert) pairs per expert, seeded, with no duplicate texts."""
    rng = random.Random(seed)
    conditions = tuple(_CONDITIONS) + tuple(extra_conditions)
    # Real names from the standard library of the Python that runs the training (3.11 here); another
    # Python version lists other modules, so its code questions, and the model, differ slightly.
    modules = sorted(m for m in sys.stdlib_module_names if not m.startswith("_"))

    def pick(values: Sequence[str]) -> str:
        return values[rng.randrange(len(values))]

    def two(values: Sequence[str]) -> tuple[str, str]:
        a, b = rng.sample(list(values), 2)
        return a, b

    def numbers() -> dict[str, object]:
        a, b, c = rng.randint(2, 12), rng.randint(2, 12), rng.randint(13, 60)
        p, p2 = rng.choice((5, 10, 15, 20, 25, 40)), rng.choice((50, 60, 70))
        return {"a": a, "b": b, "c": c, "b2": b * b, "s": a + b, "prod": a * b, "sq": rng.randint(2, 30) ** 2,
                "n": rng.choice((48, 120, 250, 360, 500, 1200, 2500, 84, 97, 91)), "p": p,
                "t": rng.randint(2, 9), "k": rng.randint(3, 8), "total": a * 3 + b * 2, "dice": rng.randint(2, 12),
                "per": 2 * (a + b), "pow2": 2 ** rng.randint(3, 12), "f": pick(_FUNCTIONS), "name": pick(_NAMES),
                "hour": rng.randint(6, 11), "minute": rng.choice(("05", "15", "20", "30", "40", "45")),
                "v1": rng.choice((12, 15, 18, 40, 50, 65, 70)), "v2": rng.choice((20, 24, 30, 75, 90, 100)),
                "dist": rng.choice((60, 120, 180, 240, 300, 450, 600)), "t2": rng.randint(10, 14),
                "k2": rng.randint(9, 15), "k3": rng.randint(1, 2), "p2": p2, "p3": (p + p2) // 2,
                "mid": f"{(a + b) / 2:.2f}", "age1": rng.randint(30, 50),
                "age2": rng.randint(4, 14), "total2": a * 2 + b * 3}

    def fill(expert: str) -> str:
        if expert == "medicine":
            c1, c2 = two(conditions)
            d1, d2 = two(_DRUGS)
            s1, s2 = two(_SYMPTOMS)
            return pick(_MEDICINE_FORMS).format(condition=c1, condition2=c2, drug=d1, drug2=d2, symptom=s1,
                                                symptom2=s2, procedure=pick(_PROCEDURES), person=pick(_PEOPLE))
        if expert == "law":
            t1, t2 = two(_LEGAL_TERMS)
            return pick(_LAW_FORMS).format(party=pick(_PARTIES), party_action=pick(_PARTY_ACTIONS),
                                           legal_task=pick(_LEGAL_TASKS), legal_term=t1, legal_term2=t2,
                                           situation=pick(_LEGAL_SITUATIONS), place=pick(_PLACES))
        if expert == "science":
            a, b = pick(_SCIENCE_PAIRS)
            w1, w2 = two(_SCIENCE_WHY)
            return pick(_SCIENCE_FORMS).format(topic=pick(_SCIENCE_TOPICS), why=w1, why2=w2.replace("the ", "", 0),
                                               a=a, b=b, element=pick(_ELEMENTS))
        if expert == "code":
            l1, l2 = two(_LANGUAGES)
            a, b = pick(_CODE_PAIRS)
            t1, t3 = two(_CODE_TASKS)
            return pick(_CODE_FORMS).format(lang=l1, lang2=l2, task=t1, task3=t3, framework=pick(_FRAMEWORKS),
                                            error=pick(_CODE_ERRORS), concept=pick(_CODE_CONCEPTS), a=a, b=b,
                                            thing=pick(_CODE_THINGS), regex_target=pick(_REGEX_TARGETS),
                                            sql_task=pick(_SQL_TASKS), module=pick(modules))
        if expert == "math":
            return pick(_MATH_FORMS).format(**numbers())
        return pick(_GENERAL_FORMS).format(
            genre=pick(_GENRES), topic=pick(_TOPICS), occasion=pick(_OCCASIONS), city=pick(_CITIES),
            k=rng.randint(2, 7), recipient=pick(_RECIPIENTS), subject=pick(_SUBJECTS), job=pick(_JOBS),
            media=pick(_MEDIA), title=pick(_TITLES), ingredient=pick(_INGREDIENTS), skill=pick(_SKILLS),
            business=pick(_BUSINESSES), product=pick(_PRODUCTS), language=pick(_LANGS), event=pick(_EVENTS),
            person_hist=pick(_HISTORICAL))

    out: list[tuple[str, str]] = []
    for expert in ("code", "math", "science", "medicine", "law", "general"):
        seen: set[str] = set()
        attempts = 0
        while len(seen) < per_expert and attempts < per_expert * 50:
            attempts += 1
            text = fill(expert)
            lowered = text.lower()
            if lowered in seen or any(p in lowered for p in EXCLUDED_PHRASES):
                continue
            seen.add(lowered)
            out.append((text, expert))
    return out
